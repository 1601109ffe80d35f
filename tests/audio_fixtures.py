"""Signals and helpers shared by the codec tests: short noisy sines, state snapshots, a few training steps."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from tokenizers_audio import (
    MultiScaleAudioCodec,
    MultiScaleAudioConfig,
    RVQAudioCodec,
    RVQAudioConfig,
    SingleCodebookAudioCodec,
    SingleCodebookAudioConfig,
)

SR = 16000
CLIP = 2000  # 0.125 s; hop 8 gives 250 latent frames
JUDGED_CLIP = 4000  # 0.25 s: the shortest clip the tones judge reads
TINY_TONES_CODEC = {"sample_rate": SR, "clip_samples": JUDGED_CLIP, "strides": [4, 5], "base_channels": 4, "dim": 8,
                    "codebook_size": 16}


def sines(batch: int = 2, samples: int = CLIP, *, seed: int = 0) -> torch.Tensor:
    """Sines of random pitch and loudness plus a little noise, ``[B, 1, samples]``."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / SR
    freq = 200 + 600 * torch.rand(batch, 1, 1, generator=g)
    amp = 0.3 + 0.4 * torch.rand(batch, 1, 1, generator=g)
    return amp * torch.sin(2 * torch.pi * freq * t) + 0.01 * torch.randn(batch, 1, samples, generator=g)


def state_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def adam_steps(codec: torch.nn.Module, batches: Iterable[torch.Tensor], *, lr: float = 1e-3) -> tuple[list[float], dict[str, float]]:
    """One Adam step on ``codec.loss`` per batch, in training mode: the losses and the last step's logs."""
    codec.train()
    optimizer = torch.optim.Adam(codec.parameters(), lr=lr)
    losses, logs = [], {}
    for audio in batches:
        loss, logs = codec.loss(audio)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, logs


def tones_codec(kind: str) -> torch.nn.Module:
    """A tiny random codec (``"rvq"``, ``"multiscale"`` or ``"single"``) for pipelines judged on tones, in eval mode."""
    torch.manual_seed(0)
    if kind == "rvq":
        return RVQAudioCodec(RVQAudioConfig(**TINY_TONES_CODEC, num_quantizers=4, generator_quantizers=2)).eval()
    if kind == "multiscale":
        return MultiScaleAudioCodec(MultiScaleAudioConfig(**TINY_TONES_CODEC, codebook_dim=4)).eval()
    return SingleCodebookAudioCodec(SingleCodebookAudioConfig(**TINY_TONES_CODEC, decoder_dim=16, decoder_layers=1)).eval()
