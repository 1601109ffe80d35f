"""The reference path against the written definitions, evaluated token by token in Python."""

import math

import pytest
import torch
from test_sampling_stats import tied_logits

from mmgen.sampling import apply_guidance, filtered_probs


def brute_allowed(x: list[float], temperature: float, top_k: int, top_p: float, min_p: float) -> set[int]:
    """The allowed set of one row, straight from the definitions in mmgen.sampling.reference."""
    finite = [i for i, v in enumerate(x) if v > -math.inf]
    m = max(x)
    if temperature == 0:
        return {x.index(m)}
    e = [math.exp((v - m) / temperature) for v in x]
    keep = set(finite)
    if top_k:
        kth = sorted(x, reverse=True)[top_k - 1]
        keep = {i for i in keep if x[i] >= kth}
    if top_p < 1:
        mass = sum(e[i] for i in keep)
        keep = {i for i in keep if sum(e[j] for j in keep if x[j] > x[i]) < top_p * mass}
    return {i for i in keep if e[i] >= min_p}


@pytest.mark.parametrize("seed", range(6))
def test_reference_allowed_set_matches_the_definitions(seed):
    x_NV = tied_logits(24, 12, seed)
    x_NV[0, :3] = -math.inf
    g = torch.Generator().manual_seed(100 + seed)
    T_N = torch.rand(24, generator=g) * 2 + 0.2
    T_N[::7] = 0.0
    k_N = torch.randint(0, 13, (24,), generator=g)
    p_N = torch.rand(24, generator=g) * 0.9 + 0.1
    p_N[::5] = 1.0
    q_N = torch.rand(24, generator=g) * 0.6
    q_N[::3] = 0.0
    allowed_NV = filtered_probs(x_NV, temperature=T_N, top_k=k_N, top_p=p_N, min_p=q_N) > 0
    for n in range(24):
        want = brute_allowed(x_NV[n].tolist(), T_N[n].item(), int(k_N[n]), p_N[n].item(), q_N[n].item())
        assert set(allowed_NV[n].nonzero().flatten().tolist()) == want, n


def test_top_k_keeps_every_tie_at_the_kth_value():
    x = torch.tensor([[3.0, 3.0, 3.0, 1.0, 2.0]])
    assert (filtered_probs(x, top_k=2) > 0).tolist() == [[True, True, True, False, False]]


def test_top_p_keeps_ties_with_the_last_admitted_token():
    x = torch.tensor([[0.4, 0.2, 0.2, 0.2]]).log()
    assert (filtered_probs(x, top_p=0.5) > 0).tolist() == [[True, True, True, True]]
    assert (filtered_probs(x, top_p=0.3) > 0).tolist() == [[True, False, False, False]]


def test_top_p_is_relative_to_the_top_k_mass():
    x = torch.tensor([[0.3, 0.25, 0.2, 0.15, 0.1]]).log()
    # top-k=3 renormalises to (0.4, 0.333, 0.267): mass 0.4 < 0.7 admits the second token.
    assert (filtered_probs(x, top_k=3, top_p=0.7) > 0).tolist() == [[True, True, False, False, False]]


def test_min_p_is_relative_to_the_most_probable_token_after_temperature():
    x = torch.tensor([[0.0, -math.log(2.0), -math.log(4.0)]])
    assert (filtered_probs(x, min_p=0.3) > 0).tolist() == [[True, True, False]]
    assert (filtered_probs(x, min_p=0.3, temperature=2.0) > 0).tolist() == [[True, True, True]]


def test_greedy_picks_the_lowest_index_among_equal_maxima():
    x = torch.tensor([[1.0, 5.0, 2.0, 5.0]])
    assert filtered_probs(x, temperature=0.0).tolist() == [[0.0, 1.0, 0.0, 0.0]]


def test_probabilities_are_the_renormalised_tempered_softmax():
    x = torch.tensor([[2.0, 1.0, 0.0, -1.0, -math.inf]])
    probs = filtered_probs(x, temperature=0.5, top_k=3)
    want = torch.softmax(torch.tensor([2.0, 1.0, 0.0]) / 0.5, 0)
    torch.testing.assert_close(probs[0, :3], want)
    assert probs[0, 3:].tolist() == [0.0, 0.0]


def test_guidance_formula_masks_and_exact_cond_at_scale_one():
    g = torch.Generator().manual_seed(0)
    c, u = torch.randn(3, 7, generator=g), torch.randn(3, 7, generator=g)
    torch.testing.assert_close(apply_guidance(c, u, 2.5), u + 2.5 * (c - u))
    assert torch.equal(apply_guidance(c, u, 1.0), c)
    s_N = torch.tensor([1.0, 0.0, 3.0])
    torch.testing.assert_close(apply_guidance(c, u, s_N), u + s_N[:, None] * (c - u))
    c[0, 1] = -math.inf
    u[1, 2] = -math.inf
    x = apply_guidance(c, u, 4.0)
    assert x[0, 1] == -math.inf and x[1, 2] == -math.inf and torch.isfinite(x).sum() == 19
