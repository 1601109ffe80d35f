"""The fused Triton kernel on CPU tensors through Triton's interpreter.

TRITON_INTERPRET=1 must be set before triton is first imported, so this module only runs in a
process started that way; test_sampling_triton_runner.py starts one for the normal test run.
Shapes stay small (V <= 512, N <= 8 unless a test draws one sample per row): the interpreter
runs every program in Python.
"""

import math
import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "needs TRITON_INTERPRET=1 before triton is imported (run by test_sampling_triton_runner.py)",
        allow_module_level=True,
    )
pytest.importorskip("triton")

from test_sampling_stats import FALSE_ALARM, chi_square_pvalue, tied_logits

from mmgen.sampling import filtered_probs, sample, triton_kernel

# numpy warns about inf - inf and overflow inside the interpreter; the kernel masks those lanes.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")

CASES = {
    "plain": {},
    "temperature": {"temperature": 0.6},
    "top_k": {"top_k": 4},
    "top_p": {"top_p": 0.6},
    "min_p": {"min_p": 0.3},
    "top_k_top_p": {"top_k": 6, "top_p": 0.7, "temperature": 1.3},
    "all_filters": {"top_k": 8, "top_p": 0.9, "min_p": 0.1, "temperature": 0.8},
}


def triton_sample(logits, **kwargs):
    return sample(logits, backend="triton", **kwargs)


@pytest.fixture(params=["one_tile", "many_tiles"])
def tiles(request, monkeypatch):
    """Rows in one tile, or split over several 16-column tiles (the multi-pass code paths)."""
    if request.param == "many_tiles":
        monkeypatch.setattr(triton_kernel, "_MAX_BLOCK", 16)
    return request.param


def per_row_cases(rows_per_case: int) -> dict[str, torch.Tensor]:
    """Every case of CASES as per-row parameters, ``rows_per_case`` rows each."""
    defaults = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
    return {
        key: torch.tensor([case.get(key, default) for case in CASES.values() for _ in range(rows_per_case)])
        for key, default in defaults.items()
    }


def test_drawn_ids_are_exactly_the_allowed_set(tiles):
    """All cases in one launch (3 rows each), on tied logits with masked columns."""
    params = per_row_cases(3)
    x_NV = tied_logits(len(params["top_k"]), 40, seed=1)
    x_NV[1::3, ::2] = -math.inf
    probs_NV = filtered_probs(x_NV, **params)
    ids_NS = triton_sample(x_NV, **params, seed=7, num_samples=2000)
    for n in range(x_NV.shape[0]):
        drawn = set(ids_NS[n].tolist())
        allowed = set(probs_NV[n].nonzero().flatten().tolist())
        assert drawn <= allowed, (n, drawn - allowed)
        likely = set((probs_NV[n] > 0.005).nonzero().flatten().tolist())
        assert likely <= drawn, (n, likely - drawn)


def test_thresholds_are_exact_on_hard_value_sets():
    """Values one ulp apart, +-0, huge ranges and masks: the pivot search must land exactly."""
    tiny = torch.tensor(1.0).nextafter(torch.tensor(2.0)) - 1.0
    rows = [
        [1.0, 1.0 + tiny, 1.0 + 2 * tiny, 1.0 + 2 * tiny, 1.0, -5.0, 0.5, 1.0 + 3 * tiny],
        [0.0, -0.0, 0.0, -1e-30, 1e-30, -0.0, 1e-38, -1e-38],
        [3e38, -3e38, 1e30, -1e30, 0.0, 3e38, 1.0, -math.inf],
        [-math.inf, -math.inf, 2.0, -math.inf, 2.0, 2.0, -math.inf, -math.inf],
    ]
    x_NV = torch.tensor(rows)
    for kwargs in ({"top_k": 1}, {"top_k": 2}, {"top_k": 3}, {"top_k": 5}, {"top_p": 0.3}, {"top_k": 6, "top_p": 0.9}):
        kwargs = {**kwargs, "temperature": 1e-7 if "top_p" not in kwargs else 1.0}
        allowed_NV = filtered_probs(x_NV, **kwargs) > 0
        ids_NS = triton_sample(x_NV, **kwargs, seed=0, num_samples=400)
        drawn_NV = torch.zeros_like(allowed_NV).scatter_(1, ids_NS, True)
        assert not (drawn_NV & ~allowed_NV).any(), kwargs
    for k in range(1, 9):
        ids_NS = triton_sample(x_NV[:3], top_k=k, temperature=1e30, seed=1, num_samples=300)
        allowed_NV = filtered_probs(x_NV[:3], top_k=k, temperature=1e30) > 0
        drawn_NV = torch.zeros_like(allowed_NV).scatter_(1, ids_NS, True)
        assert torch.equal(drawn_NV, allowed_NV), k


def test_frequencies_match_the_filtered_distribution():
    """Every case as one row of a single launch, 20,000 draws per row."""
    cases = [*CASES.values(), {"guidance_scale": 2.0, "top_k": 10}]
    x_NV = tied_logits(1, 16, seed=2, levels=7).expand(len(cases), 16).contiguous()
    uncond_NV = tied_logits(len(cases), 16, seed=3, levels=7)
    defaults = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "guidance_scale": 1.0}
    per_row = {key: [case.get(key, default) for case in cases] for key, default in defaults.items()}
    params = {key: torch.tensor(values) for key, values in per_row.items()}
    ids_NS = triton_sample(
        x_NV, uncond_logits=uncond_NV, **params, generator=torch.Generator().manual_seed(11), num_samples=20_000
    )
    for n in range(len(cases)):
        one_row = {key: values[n] for key, values in per_row.items()}
        probs_V = filtered_probs(x_NV[n : n + 1], uncond_logits=uncond_NV[n : n + 1], **one_row)[0]
        assert chi_square_pvalue(ids_NS[n], probs_V) > FALSE_ALARM, n


def test_rows_with_equal_logits_draw_independently():
    x_NV = tied_logits(1, 32, seed=4).expand(8, 32)
    ids_NS = triton_sample(x_NV, top_p=0.9, generator=torch.Generator().manual_seed(5), num_samples=64)
    assert len({tuple(row.tolist()) for row in ids_NS}) == 8


def test_top_k_ties_past_the_kth_position_count_in_the_top_p_mass(tiles):
    x_NV = torch.tensor([[5.0, 4.0, 1.0, 1.0, 1.0, 1.0, 0.0, -1.0] * 4])
    x_NV[0, 8:] = -2.0
    kwargs = {"top_k": 3, "top_p": 0.71, "min_p": 0.1}
    probs_V = filtered_probs(x_NV, **kwargs)[0]
    assert (probs_V > 0).nonzero().flatten().tolist() == [0, 1]
    ids = triton_sample(x_NV, **kwargs, seed=3, num_samples=20_000)
    assert chi_square_pvalue(ids, probs_V) > FALSE_ALARM


def test_argmax_limits():
    g = torch.Generator().manual_seed(0)
    x_NV = torch.randn(8, 300, generator=g)
    argmax_N = x_NV.argmax(1)
    for kwargs in ({"top_k": 1}, {"top_p": 1e-6}, {"temperature": 0.0}, {"min_p": 1.0}):
        assert torch.equal(triton_sample(x_NV, **kwargs, generator=g), argmax_N), kwargs


def test_greedy_takes_the_first_of_equal_maxima(tiles):
    x_NV = torch.full((2, 40), -1.0)
    x_NV[0, [17, 3, 33]] = 2.0
    x_NV[1, [39, 20]] = 2.0
    x_NV[1, :20] = -math.inf
    assert triton_sample(x_NV, temperature=0.0, top_k=2).tolist() == [3, 20]


def test_guidance_scale_one_equals_cond_only():
    g = torch.Generator().manual_seed(3)
    cond, uncond = torch.randn(4, 64, generator=g), torch.randn(4, 64, generator=g)
    kwargs = {"top_k": 20, "top_p": 0.9, "num_samples": 50, "seed": 9}
    assert torch.equal(
        triton_sample(cond, uncond_logits=uncond, guidance_scale=1.0, **kwargs), triton_sample(cond, **kwargs)
    )


def test_guidance_follows_the_formula():
    cond = torch.tensor([[1.0, 0.0, 0.0, -1.0]])
    uncond = torch.tensor([[0.0, 0.0, 1.0, -1.0]])
    ids = triton_sample(cond, uncond_logits=uncond, guidance_scale=3.0, seed=0, num_samples=20_000)
    assert chi_square_pvalue(ids, torch.softmax(uncond + 3.0 * (cond - uncond), 1)[0]) > FALSE_ALARM


def test_per_row_parameters_apply_to_their_own_row():
    x_NV = tied_logits(1, 24, seed=6, levels=8).expand(5, 24).contiguous()
    uncond_NV = tied_logits(5, 24, seed=8, levels=8)
    rows = {
        "temperature": torch.tensor([0.0, 1.0, 2.0, 1.0, 0.5]),
        "top_k": torch.tensor([0, 1, 0, 5, 0], dtype=torch.int32),
        "top_p": torch.tensor([1.0, 1.0, 0.5, 1.0, 1.0], dtype=torch.float64),
        "min_p": torch.tensor([0.0, 0.0, 0.0, 0.0, 0.2]),
        "guidance_scale": torch.tensor([1.0, 1.0, 1.0, 2.0, 1.0]),
    }
    ids_NS = triton_sample(x_NV, uncond_logits=uncond_NV, **rows, seed=1, num_samples=4000)
    for n in range(5):
        one_row = {name: value[n].item() for name, value in rows.items()}
        probs_V = filtered_probs(x_NV[n : n + 1], uncond_logits=uncond_NV[n : n + 1], **one_row)[0]
        assert chi_square_pvalue(ids_NS[n], probs_V) > FALSE_ALARM, n
    assert (ids_NS[0] == x_NV[0].argmax()).all()


def test_seeds_reproduce_and_rows_ignore_their_batch():
    x_NV = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    kwargs = {"top_k": 20, "top_p": 0.95, "num_samples": 3}
    first = triton_sample(x_NV, generator=torch.Generator().manual_seed(42), **kwargs)
    assert torch.equal(first, triton_sample(x_NV, generator=torch.Generator().manual_seed(42), **kwargs))
    assert not torch.equal(first, triton_sample(x_NV, generator=torch.Generator().manual_seed(43), **kwargs))
    more = torch.cat([x_NV, torch.randn(2, 64, generator=torch.Generator().manual_seed(1))])
    assert torch.equal(triton_sample(more, generator=torch.Generator().manual_seed(42), **kwargs)[:4], first)
    seeds_N = torch.tensor([5, -7, 2**50, 100])
    ids = triton_sample(x_NV, seed=seeds_N, **kwargs)
    order = torch.tensor([2, 0, 3, 1])
    assert torch.equal(triton_sample(x_NV[order], seed=seeds_N[order], **kwargs), ids[order])
    from_int = triton_sample(x_NV, seed=98, **kwargs)
    assert torch.equal(from_int[2:], triton_sample(x_NV[2:], seed=torch.tensor([100, 101]), **kwargs))
    assert torch.equal(triton_sample(x_NV, seed=98, top_k=20, top_p=0.95), from_int[:, 0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_logits(dtype):
    x_NV = tied_logits(3, 40, seed=9)
    kwargs = {"top_k": 7, "top_p": 0.8, "seed": 2, "num_samples": 20}
    assert torch.equal(triton_sample(x_NV.to(dtype), **kwargs), triton_sample(x_NV, **kwargs))


def test_non_contiguous_rows():
    x_BTV = torch.randn(3, 5, 50, generator=torch.Generator().manual_seed(0))
    kwargs = {"top_k": 10, "seed": 1, "num_samples": 5}
    assert torch.equal(triton_sample(x_BTV[:, -1, :], **kwargs), triton_sample(x_BTV[:, -1, :].contiguous(), **kwargs))


def test_invalid_rows_are_flagged_and_get_id_zero():
    x_NV = torch.randn(6, 20, generator=torch.Generator().manual_seed(0))
    x_NV[1, 3] = math.nan
    x_NV[2, :] = -math.inf
    x_NV[4, 0] = math.inf
    uncond_NV = torch.zeros(6, 20)
    uncond_NV[5, 7] = math.nan
    kwargs = {"uncond_logits": uncond_NV, "guidance_scale": 1.5, "top_k": 5, "top_p": 0.9}
    ids, valid = triton_sample(x_NV, **kwargs, seed=0, return_valid=True)
    assert valid.tolist() == [True, False, False, True, False, False]
    assert ids[~valid].tolist() == [0, 0, 0, 0]
    with pytest.raises(
        ValueError, match=r"rows \[1, 5\] contain NaN.*rows \[4\] contain \+inf.*rows \[2\] are entirely -inf"
    ):
        triton_sample(x_NV, **kwargs)


def test_out_of_range_row_parameters_are_flagged():
    x_NV = torch.randn(5, 10, generator=torch.Generator().manual_seed(0))
    kwargs = {
        "top_p": torch.tensor([0.5, 1.5, 0.9, 0.9, 0.9]),
        "top_k": torch.tensor([1, 0, 11, 2, 2]),
        "temperature": torch.tensor([1.0, 1.0, 1.0, math.nan, 1.0]),
        "min_p": torch.tensor([0.0, 0.0, 0.0, 0.0, -0.5]),
    }
    ids, valid = triton_sample(x_NV, **kwargs, seed=0, return_valid=True)
    assert valid.tolist() == [True, False, False, False, False]
    assert ids.tolist()[1:] == [0, 0, 0, 0]
    with pytest.raises(ValueError, match=r"top_k must be an integer in \[0, V\] = \[0, 10\]; rows \[2\] have \[11\]"):
        triton_sample(x_NV, **kwargs)
