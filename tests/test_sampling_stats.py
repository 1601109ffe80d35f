"""Shared helpers for the sampling tests (no tests here): goodness of fit and tied logits."""

import torch

FALSE_ALARM = 1e-4  # per chi-square test; seeds are fixed, so every run is the same run


def chi_square_pvalue(ids: torch.Tensor, probs_V: torch.Tensor) -> float:
    """p-value of Pearson's chi-square test that ``ids`` were drawn from ``probs_V``.

    Any id outside the support gives 0. Cells expecting fewer than 5 draws are pooled.
    """
    probs_V = probs_V.double().cpu()
    counts_V = torch.bincount(ids.flatten().cpu(), minlength=probs_V.numel()).double()
    if (counts_V[probs_V == 0] > 0).any():
        return 0.0
    expected_V = probs_V * counts_V.sum()
    big = expected_V >= 5
    obs = counts_V[big].tolist()
    exp = expected_V[big].tolist()
    small_exp = float(expected_V[~big].sum())
    if small_exp > 0:
        if small_exp >= 5 or not exp:
            obs.append(float(counts_V[~big].sum()))
            exp.append(small_exp)
        else:
            obs[-1] += float(counts_V[~big].sum())
            exp[-1] += small_exp
    if len(exp) < 2:
        return 1.0
    stat = sum((o - e) ** 2 / e for o, e in zip(obs, exp))
    dof = len(exp) - 1
    return float(
        torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(stat / 2, dtype=torch.float64))
    )


def tied_logits(num_rows: int, vocab: int, seed: int, levels: int = 5) -> torch.Tensor:
    """Logits on a coarse grid, so that many tokens tie (also at filter thresholds)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, (num_rows, vocab), generator=g).float() * 0.75 - 1.5
