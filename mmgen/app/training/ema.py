"""Exponential moving average of a module's trainable weights, checkpointed with the run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """``shadow = decay · shadow + (1 − decay) · weight`` after every step; ``copy_to`` puts the average in place.

    Has ``state_dict`` / ``load_state_dict`` so ``accelerator.register_for_checkpointing`` saves and restores it.
    """

    def __init__(self, module: nn.Module, *, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {name: p.detach().clone().float() for name, p in module.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for name, p in module.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach().float(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        for name, p in module.named_parameters():
            if name in self.shadow:
                p.copy_(self.shadow[name].to(p.dtype))

    @contextmanager
    def applied(self, module: nn.Module) -> Iterator[nn.Module]:
        """Evaluate with the average in place, then put the trained weights back (periodic evaluation mid-run)."""
        saved = {name: p.detach().clone() for name, p in module.named_parameters() if name in self.shadow}
        self.copy_to(module)
        try:
            yield module
        finally:
            with torch.no_grad():
                for name, p in module.named_parameters():
                    if name in saved:
                        p.copy_(saved[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise ValueError(f"EMA state lacks {missing[:3]}{'...' if len(missing) > 3 else ''}")
        self.shadow = {name: state[name].clone().float() for name in self.shadow}
