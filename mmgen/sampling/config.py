"""``SamplingConfig``: the sampling settings a pipeline carries from call to call."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .guidance import GuidanceSchedule, check_schedule
from .params import check_params
from .sampler import BACKENDS, Backend, sample


@dataclass(frozen=True)
class SamplingConfig:
    """Temperature, filters and guidance (with its schedule) for :func:`mmgen.sampling.sample`.

    ``guidance_scale`` is the constant scale, or the scale reached at the end of a
    ``"linear"`` / ``"power_cosine"`` ramp; ``guidance_interval`` limits guidance to a part of
    the steps (see :class:`mmgen.sampling.guidance.GuidanceSchedule`). ``num_flow_steps`` is the
    number of Euler steps of a flow head (None: the head's default).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    guidance_scale: float = 1.0
    guidance_schedule: str = "constant"
    guidance_power: float = 1.0
    guidance_interval: tuple[float, float] | None = None
    backend: Backend = "auto"
    num_flow_steps: int | None = None

    def __post_init__(self) -> None:
        for name in ("temperature", "top_k", "top_p", "min_p", "guidance_scale"):
            if isinstance(getattr(self, name), torch.Tensor):
                raise TypeError(f"{name} must be a number in a SamplingConfig (per-row tensors go to "
                                "mmgen.sampling.sample), got a tensor")
        check_params(
            num_rows=0,
            vocab_size=None,
            device=torch.device("cpu"),
            has_uncond=True,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            guidance_scale=self.guidance_scale,
        )
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        steps = self.num_flow_steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ValueError(f"num_flow_steps must be None (the head's default) or a positive int, got {steps!r}")
        check_schedule(scale=self.guidance_scale, kind=self.guidance_schedule, power=self.guidance_power,
                       interval=self.guidance_interval,
                       names=("guidance_scale", "guidance_schedule", "guidance_power", "guidance_interval"))

    @property
    def guidance(self) -> GuidanceSchedule:
        """The guidance schedule described by the ``guidance_*`` fields."""
        return GuidanceSchedule(
            scale=self.guidance_scale,
            kind=self.guidance_schedule,
            power=self.guidance_power,
            interval=self.guidance_interval,
        )

    def guidance_scale_at(self, step: int, num_steps: int) -> float:
        """Guidance scale at ``step`` of ``num_steps``; 1.0 means the uncond pass can be skipped."""
        return self.guidance.scale_at(step, num_steps)

    def sample(
        self,
        logits: torch.Tensor,
        *,
        uncond_logits: torch.Tensor | None = None,
        step: int = 0,
        num_steps: int = 1,
        generator: torch.Generator | None = None,
        seed: int | torch.Tensor | None = None,
        num_samples: int | None = None,
        return_valid: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Sample ``logits [N, V]`` at ``step`` of ``num_steps`` with this configuration.

        ``uncond_logits`` is required whenever the guidance scale at this step is not 1.
        """
        scale = self.guidance_scale_at(step, num_steps)
        if uncond_logits is None and scale != 1.0:
            raise ValueError(
                f"guidance scale at step {step} of {num_steps} is {scale}; pass uncond_logits (or use guidance_scale=1.0)"
            )
        return sample(
            logits,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            uncond_logits=uncond_logits,
            guidance_scale=scale,
            generator=generator,
            seed=seed,
            num_samples=num_samples,
            return_valid=return_valid,
            backend=self.backend,
        )
