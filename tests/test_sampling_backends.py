"""The reference and fast backends against the specification (the Triton kernel: test_sampling_triton.py)."""

import math

import pytest
import torch
from test_sampling_stats import FALSE_ALARM, chi_square_pvalue, tied_logits

from mmgen.sampling import fast, filtered_probs, sample

BACKENDS = ["reference", "fast"]

# (name, sampling kwargs): every filter alone and combined, on tied logits.
CASES = [
    ("plain", {}),
    ("temperature", {"temperature": 0.6}),
    ("top_k", {"top_k": 4}),
    ("top_p", {"top_p": 0.6}),
    ("min_p", {"min_p": 0.3}),
    ("top_k_top_p", {"top_k": 6, "top_p": 0.7, "temperature": 1.3}),
    ("all_filters", {"top_k": 8, "top_p": 0.9, "min_p": 0.1, "temperature": 0.8}),
]


@pytest.fixture
def small_window(monkeypatch):
    """Start the fast path's window at 2 tokens so that widening and coverage checks run."""
    monkeypatch.setattr(fast, "_WINDOW", 2)
    monkeypatch.setattr(fast, "_GROWTH", 2)


def drawn_sets(ids_NS: torch.Tensor) -> list[set[int]]:
    return [set(row.tolist()) for row in ids_NS]


@pytest.mark.parametrize("backend,window", [("reference", "default"), ("fast", "default"), ("fast", "small")])
@pytest.mark.parametrize("name,kwargs", CASES)
def test_drawn_ids_are_exactly_the_allowed_set(backend, window, name, kwargs, request):
    if window == "small":
        request.getfixturevalue("small_window")
    x_NV = tied_logits(6, 24, seed=1)
    x_NV[1, ::2] = -math.inf
    probs_NV = filtered_probs(x_NV, **kwargs)
    ids_NS = sample(x_NV, **kwargs, seed=7, num_samples=3000, backend=backend)
    for n, drawn in enumerate(drawn_sets(ids_NS)):
        allowed = set(probs_NV[n].nonzero().flatten().tolist())
        assert drawn <= allowed, (n, drawn - allowed)
        likely = set((probs_NV[n] > 0.005).nonzero().flatten().tolist())
        assert likely <= drawn, (n, likely - drawn)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,kwargs", CASES + [("guidance", {"guidance_scale": 2.0, "top_k": 10})])
def test_frequencies_match_the_filtered_distribution(backend, name, kwargs):
    x_NV = tied_logits(1, 16, seed=2, levels=7)
    if "guidance_scale" in kwargs:
        kwargs = {**kwargs, "uncond_logits": tied_logits(1, 16, seed=3, levels=7)}
    probs_V = filtered_probs(x_NV, **kwargs)[0]
    ids = sample(x_NV, **kwargs, generator=torch.Generator().manual_seed(11), num_samples=20_000, backend=backend)
    assert chi_square_pvalue(ids, probs_V) > FALSE_ALARM


@pytest.mark.parametrize("backend", BACKENDS)
def test_top_k_ties_past_the_kth_position_count_in_the_top_p_mass(backend):
    """k=3 cuts through four tied 1.0s: all are kept, and their mass decides top-p for the 4.0.

    With S the full top-k mass, 4.0 has mass above it 1.0 < 0.71 * S (kept); with only one of
    the tied tokens counted it would be dropped. min-p then removes the ties themselves.
    """
    x_NV = torch.tensor([[5.0, 4.0, 1.0, 1.0, 1.0, 1.0, 0.0, -1.0]])
    kwargs = {"top_k": 3, "top_p": 0.71, "min_p": 0.1}
    probs_V = filtered_probs(x_NV, **kwargs)[0]
    assert (probs_V > 0).tolist() == [True, True, False, False, False, False, False, False]
    ids = sample(x_NV, **kwargs, seed=3, num_samples=20_000, backend=backend)
    assert chi_square_pvalue(ids, probs_V) > FALSE_ALARM


@pytest.mark.parametrize("backend", BACKENDS)
def test_frequencies_across_rows_match(backend, small_window):
    """20,000 rows of one distribution: each row draws once, with its own row seed."""
    x_NV = tied_logits(1, 32, seed=4).expand(20_000, 32)
    kwargs = {"top_p": 0.8, "temperature": 1.5}
    probs_V = filtered_probs(x_NV[:1], **kwargs)[0]
    ids = sample(x_NV, **kwargs, generator=torch.Generator().manual_seed(5), backend=backend)
    assert chi_square_pvalue(ids, probs_V) > FALSE_ALARM


@pytest.mark.parametrize("backend", BACKENDS)
def test_argmax_limits(backend):
    g = torch.Generator().manual_seed(0)
    x_NV = torch.randn(16, 100, generator=g)
    argmax_N = x_NV.argmax(1)
    for kwargs in ({"top_k": 1}, {"top_p": 1e-6}, {"temperature": 0.0}, {"min_p": 1.0}):
        ids = sample(x_NV, **kwargs, generator=g, backend=backend)
        assert torch.equal(ids, argmax_N), kwargs


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_takes_the_first_of_equal_maxima(backend):
    x_NV = torch.tensor([[0.0, 2.0, 1.0, 2.0, 2.0], [3.0, 3.0, -math.inf, 0.0, 3.0]])
    assert sample(x_NV, temperature=0.0, top_k=2, backend=backend).tolist() == [1, 0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_guidance_scale_one_equals_cond_only(backend):
    g = torch.Generator().manual_seed(3)
    cond, uncond = torch.randn(8, 64, generator=g), torch.randn(8, 64, generator=g)
    kwargs = {"top_k": 20, "top_p": 0.9, "num_samples": 50, "backend": backend}
    guided = sample(cond, uncond_logits=uncond, guidance_scale=1.0, seed=9, **kwargs)
    assert torch.equal(guided, sample(cond, seed=9, **kwargs))


@pytest.mark.parametrize("backend", BACKENDS)
def test_guidance_changes_the_distribution_as_the_formula_says(backend):
    cond = torch.tensor([[1.0, 0.0, 0.0, -1.0]])
    uncond = torch.tensor([[0.0, 0.0, 1.0, -1.0]])
    ids = sample(cond, uncond_logits=uncond, guidance_scale=3.0, seed=0, num_samples=20_000, backend=backend)
    probs_V = torch.softmax(uncond + 3.0 * (cond - uncond), 1)[0]
    assert chi_square_pvalue(ids, probs_V) > FALSE_ALARM


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_row_parameters_apply_to_their_own_row(backend):
    x_NV = tied_logits(1, 24, seed=6, levels=8).expand(5, 24).contiguous()
    uncond_NV = tied_logits(5, 24, seed=8, levels=8)
    rows = {
        "temperature": torch.tensor([0.0, 1.0, 2.0, 1.0, 0.5]),
        "top_k": torch.tensor([0, 1, 0, 5, 0]),
        "top_p": torch.tensor([1.0, 1.0, 0.5, 1.0, 1.0]),
        "min_p": torch.tensor([0.0, 0.0, 0.0, 0.0, 0.2]),
        "guidance_scale": torch.tensor([1.0, 1.0, 1.0, 2.0, 1.0]),
    }
    ids_NS = sample(x_NV, uncond_logits=uncond_NV, **rows, seed=1, num_samples=4000, backend=backend)
    for n in range(5):
        one_row = {name: value[n].item() for name, value in rows.items()}
        probs_V = filtered_probs(x_NV[n : n + 1], uncond_logits=uncond_NV[n : n + 1], **one_row)[0]
        assert chi_square_pvalue(ids_NS[n], probs_V) > FALSE_ALARM, n
    assert (ids_NS[0] == x_NV[0].argmax()).all()
    assert len(set(ids_NS[2].tolist())) > 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_generator_state_gives_same_ids(backend):
    x_NV = torch.randn(32, 500, generator=torch.Generator().manual_seed(0))
    kwargs = {"top_k": 100, "top_p": 0.95, "backend": backend}
    first = sample(x_NV, generator=torch.Generator().manual_seed(42), **kwargs)
    again = sample(x_NV, generator=torch.Generator().manual_seed(42), **kwargs)
    other = sample(x_NV, generator=torch.Generator().manual_seed(43), **kwargs)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    g = torch.Generator().manual_seed(42)
    assert torch.equal(sample(x_NV, generator=g, **kwargs), first)
    assert not torch.equal(sample(x_NV, generator=g, **kwargs), first)  # the generator advanced


def test_fast_rows_keep_their_ids_when_rows_are_added(small_window):
    g = torch.Generator().manual_seed(1)
    x_NV = torch.randn(6, 300, generator=g)
    base = sample(x_NV, top_k=30, generator=torch.Generator().manual_seed(5), num_samples=4, backend="fast")
    # Appended rows force a wider window (top-p only) and then a full sort (no filter at all).
    more = torch.cat([x_NV, torch.randn(3, 300, generator=g)])
    for extra in (
        {"top_p": torch.tensor([1.0] * 6 + [0.9, 0.5, 0.99])},
        {"top_p": torch.tensor([1.0] * 6 + [1.0, 1.0, 0.9])},
    ):
        top_k = torch.tensor([30] * 6 + [0, 0, 0])
        ids = sample(
            more, top_k=top_k, **extra, generator=torch.Generator().manual_seed(5), num_samples=4, backend="fast"
        )
        assert torch.equal(ids[:6], base)


def test_fast_unfiltered_rows_draw_the_same_alone_or_beside_filtered_rows():
    x_NV = torch.randn(4, 200, generator=torch.Generator().manual_seed(2))
    alone = sample(x_NV, temperature=0.7, seed=3, num_samples=8, backend="fast")
    beside = sample(
        torch.cat([x_NV, x_NV[:1]]),
        temperature=0.7,
        top_k=torch.tensor([0, 0, 0, 0, 5]),
        seed=3,
        num_samples=8,
        backend="fast",
    )
    assert torch.equal(beside[:4], alone)


@pytest.mark.parametrize("backend", BACKENDS)
def test_explicit_row_seeds_follow_their_rows(backend):
    x_NV = torch.randn(5, 80, generator=torch.Generator().manual_seed(4))
    seeds_N = torch.tensor([11, -3, 2**40, 7, 0])
    ids = sample(x_NV, top_k=40, seed=seeds_N, num_samples=6, backend=backend)
    order = torch.tensor([3, 0, 4, 1, 2])
    moved = sample(x_NV[order], top_k=40, seed=seeds_N[order], num_samples=6, backend=backend)
    assert torch.equal(moved, ids[order])
    assert torch.equal(sample(x_NV[2:3], top_k=40, seed=seeds_N[2:3], num_samples=6, backend=backend), ids[2:3])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_logits_match_their_float32_values(backend, dtype):
    x_NV = tied_logits(4, 40, seed=9).to(dtype)
    kwargs = {"top_k": 7, "top_p": 0.8, "seed": 2, "num_samples": 20, "backend": backend}
    assert torch.equal(sample(x_NV, **kwargs), sample(x_NV.float(), **kwargs))


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_rows(backend):
    x_BTV = torch.randn(3, 5, 50, generator=torch.Generator().manual_seed(0))
    last_NV = x_BTV[:, -1, :]
    kwargs = {"top_k": 10, "seed": 1, "num_samples": 5, "backend": backend}
    assert torch.equal(sample(last_NV, **kwargs), sample(last_NV.contiguous(), **kwargs))


@pytest.mark.parametrize("backend", BACKENDS)
def test_invalid_rows_raise_or_are_flagged(backend):
    x_NV = torch.randn(5, 20, generator=torch.Generator().manual_seed(0))
    x_NV[1, 3] = math.nan
    x_NV[2, :] = -math.inf
    x_NV[4, 0] = math.inf
    with pytest.raises(
        ValueError, match=r"rows \[1\] contain NaN.*rows \[4\] contain \+inf.*rows \[2\] are entirely -inf"
    ):
        sample(x_NV, top_k=5, backend=backend)
    ids, valid = sample(x_NV, top_k=5, seed=0, return_valid=True, backend=backend)
    assert valid.tolist() == [True, False, False, True, False]
    assert ids[~valid].tolist() == [0, 0, 0]
    allowed_NV = filtered_probs(x_NV[valid], top_k=5) > 0
    assert allowed_NV.gather(1, ids[valid][:, None]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_made_invalid_by_guidance(backend):
    cond = torch.zeros(2, 6)
    uncond = torch.zeros(2, 6)
    uncond[1, 2] = math.nan
    with pytest.raises(ValueError, match=r"after classifier-free guidance: rows \[1\] contain NaN"):
        sample(cond, uncond_logits=uncond, guidance_scale=2.0, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_range_row_parameters_raise_or_are_flagged(backend):
    x_NV = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    top_p = torch.tensor([0.5, 1.5, 0.9, 0.0])
    with pytest.raises(ValueError, match=r"top_p must be a value in \(0, 1\]; rows \[1, 3\] have \[1.5, 0.0\]"):
        sample(x_NV, top_p=top_p, backend=backend)
    ids, valid = sample(
        x_NV, top_p=top_p, top_k=torch.tensor([1, 0, 11, 2]), seed=0, return_valid=True, backend=backend
    )
    assert valid.tolist() == [True, False, False, False]
    assert ids.tolist()[1:] == [0, 0, 0]
    with pytest.raises(ValueError, match=r"top_k must be an integer in \[0, V\] = \[0, 10\]; rows \[2\]"):
        sample(x_NV, top_k=torch.tensor([1, 0, 11, 2]), backend=backend)
    with pytest.raises(ValueError, match=r"temperature must be a finite value >= 0; rows \[0\]"):
        sample(x_NV, temperature=torch.tensor([-1.0, 1.0, 1.0, 1.0]), backend=backend)


def test_empty_batch():
    ids = sample(torch.zeros(0, 7))
    assert ids.shape == (0,) and ids.dtype == torch.int64
    ids, valid = sample(torch.zeros(0, 7), num_samples=3, return_valid=True)
    assert ids.shape == (0, 3) and valid.shape == (0,)
