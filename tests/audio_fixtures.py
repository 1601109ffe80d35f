"""Signals and helpers shared by the codec tests: short noisy sines and state snapshots."""

from __future__ import annotations

import torch

SR = 16000
CLIP = 2000  # 0.125 s; hop 8 gives 250 latent frames


def sines(batch: int = 2, samples: int = CLIP, *, seed: int = 0) -> torch.Tensor:
    """Sines of random pitch and loudness plus a little noise, ``[B, 1, samples]``."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / SR
    freq = 200 + 600 * torch.rand(batch, 1, 1, generator=g)
    amp = 0.3 + 0.4 * torch.rand(batch, 1, 1, generator=g)
    return amp * torch.sin(2 * torch.pi * freq * t) + 0.01 * torch.randn(batch, 1, samples, generator=g)


def state_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}
