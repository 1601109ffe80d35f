"""A per-token flow-matching head: continuous tokens drawn from the GPT's hidden states (MAR / xAR style).

The GPT gives one condition vector ``z`` per position; a small MLP predicts the velocity that carries
Gaussian noise to that position's latent vector. Convention (rectified flow, one for the package)::

    x_t = t * x1 + (1 - t) * eps,   t ~ U(0, 1),   target v = x1 - eps

so ``t = 0`` is pure noise, ``t = 1`` the data, and :meth:`FlowHead.sample` integrates with Euler from
0 to 1. Residual blocks are modulated (AdaLN shift, scale, gate) by ``z`` plus an embedding of ``t``;
the modulation and the output layer start at zero, so an untrained head predicts velocity 0.

The head also owns two things the pipeline needs around it: per-channel latent statistics
(``latent_mean`` / ``latent_std``, saved with the weights) that bring a tokenizer's latents to unit
scale, and :meth:`FlowHead.context_time`, the embedding of a context entity's noise level that
noisy-context training adds to the GPT's inputs (``t = 1``, clean, at inference).

:class:`FlowHead` implements the :class:`mmgen.heads.Head` interface on channel-last latents
``[B, L, C]`` (``loss``, ``sample``, ``embed``, ``corrupt``, ``normalize_tokens``); the row-level
methods (``velocity``, ``flow_loss``, row-form ``sample``, channels-on-dim-1 ``normalize``) stay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .heads import Head
from .sampling import SamplingConfig
from .tokens import ContinuousContent, _check_real

if TYPE_CHECKING:
    from .gpt import GPT

__all__ = ["FlowHeadConfig", "FlowHead", "DEFAULT_NUM_FLOW_STEPS"]

TIME_SCALE = 1000.0  # t in [0, 1] is spread over DiT's [0, 1000] range before the sinusoids
MIN_LATENT_STD = 1e-6
DEFAULT_NUM_FLOW_STEPS = 16  # Euler steps when SamplingConfig.num_flow_steps is None


@dataclass
class FlowHeadConfig:
    """Size of a :class:`FlowHead`: ``latent_dim`` channels per token, conditioned on ``cond_dim`` (the GPT's dim)."""

    latent_dim: int
    cond_dim: int
    width: int = 256
    depth: int = 3
    time_freq_dim: int = 64

    def __post_init__(self) -> None:
        for name in ("latent_dim", "cond_dim", "width", "depth", "time_freq_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.time_freq_dim % 2:
            raise ValueError(f"time_freq_dim must be even (cosines and sines), got {self.time_freq_dim}")


def time_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features ``[..., dim]`` of times ``t [...]`` in [0, 1] (DiT's frequencies)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * TIME_SCALE).unsqueeze(-1) * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ModulatedBlock(nn.Module):
    """Residual MLP block whose normalised input is shifted, scaled and gated by the condition."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x_NW: torch.Tensor, c_NW: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(c_NW).chunk(3, dim=-1)
        return x_NW + gate * self.mlp(self.norm(x_NW) * (1 + scale) + shift)


class FlowHead(Head):
    """Velocity network ``v(x_t, t, z)`` per token. Build with ``FlowHead(FlowHeadConfig(latent_dim=4, cond_dim=256))``."""

    config_class = FlowHeadConfig

    def __init__(self, config: FlowHeadConfig | dict) -> None:
        super().__init__()
        cfg = self._register_typed_config(config)
        self.cfg = cfg
        self.input_proj = nn.Linear(cfg.latent_dim, cfg.width)
        self.cond_proj = nn.Linear(cfg.cond_dim, cfg.width)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_freq_dim, cfg.width), nn.SiLU(), nn.Linear(cfg.width, cfg.width))
        self.blocks = nn.ModuleList(ModulatedBlock(cfg.width) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(cfg.width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.width, 2 * cfg.width))
        self.output = nn.Linear(cfg.width, cfg.latent_dim)
        self.context_mlp = nn.Sequential(nn.Linear(cfg.time_freq_dim, cfg.cond_dim), nn.SiLU(), nn.Linear(cfg.cond_dim, cfg.cond_dim))
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_dim))
        self.register_buffer("latent_std", torch.ones(cfg.latent_dim))
        self._zero_init()

    def _zero_init(self) -> None:
        """Modulations, output and context embedding start at zero: velocity 0, GPT inputs untouched."""
        zeroed = [block.modulation[-1] for block in self.blocks]
        zeroed += [self.final_modulation[-1], self.output, self.context_mlp[-1]]
        for layer in zeroed:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def latent_dim(self) -> int:
        return self.cfg.latent_dim

    @property
    def cond_dim(self) -> int:
        return self.cfg.cond_dim

    @property
    def content(self) -> ContinuousContent:
        return ContinuousContent(self.cfg.latent_dim)

    @property
    def hidden_dim(self) -> int:
        return self.cfg.cond_dim

    # ---- the network -----------------------------------------------------------------------
    def velocity(self, x_t_NC: torch.Tensor, t_N: torch.Tensor, z_ND: torch.Tensor) -> torch.Tensor:
        """Predicted velocity ``[N, latent_dim]`` at noisy tokens ``x_t [N, latent_dim]``, times ``t [N]``, conditions ``z [N, cond_dim]``.

        One row per token: the GPT gives each position its own ``z``, and tokens are independent given it.
        """
        self._check_rows(x_t_NC, t_N, z_ND)
        dtype = self.input_proj.weight.dtype
        c_NW = self.cond_proj(z_ND.to(dtype)) + self.time_mlp(time_features(t_N, self.cfg.time_freq_dim).to(dtype))
        x_NW = self.input_proj(x_t_NC.to(dtype))
        for block in self.blocks:
            x_NW = block(x_NW, c_NW)
        shift, scale = self.final_modulation(c_NW).chunk(2, dim=-1)
        return self.output(self.final_norm(x_NW) * (1 + scale) + shift)

    def context_time(self, t: torch.Tensor) -> torch.Tensor:
        """Embedding ``[..., cond_dim]`` of a context entity's noise level ``t [...]`` (1 = clean), added to GPT inputs."""
        features = time_features(t, self.cfg.time_freq_dim).to(self.context_mlp[0].weight.dtype)
        return self.context_mlp(features)

    def _check_rows(self, x_t_NC: torch.Tensor, t_N: torch.Tensor, z_ND: torch.Tensor) -> None:
        if x_t_NC.dim() != 2 or x_t_NC.shape[1] != self.cfg.latent_dim:
            raise ValueError(f"x_t must have shape [N, {self.cfg.latent_dim}] (latent_dim), got {tuple(x_t_NC.shape)}")
        N = x_t_NC.shape[0]
        if z_ND.dim() != 2 or tuple(z_ND.shape) != (N, self.cfg.cond_dim):
            raise ValueError(f"z must have shape [{N}, {self.cfg.cond_dim}] (N, cond_dim), got {tuple(z_ND.shape)}")
        if tuple(t_N.shape) != (N,):
            raise ValueError(f"t must have shape [{N}], got {tuple(t_N.shape)}")

    # ---- latent statistics -----------------------------------------------------------------
    @torch.no_grad()
    def set_latent_statistics(self, latents_BChw: torch.Tensor) -> None:
        """Store each channel's mean and std over ``latents [B, latent_dim, ...]`` so :meth:`normalize` gives unit scale."""
        self._check_channels(latents_BChw, "latents")
        per_channel_CN = latents_BChw.detach().transpose(0, 1).reshape(self.cfg.latent_dim, -1).float()
        if per_channel_CN.shape[1] < 2:
            raise ValueError("set_latent_statistics needs at least two latent positions per channel to estimate a std")
        self.latent_mean.copy_(per_channel_CN.mean(dim=1))
        self.latent_std.copy_(per_channel_CN.std(dim=1).clamp_min(MIN_LATENT_STD))

    def normalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Tokenizer latents (channels on dim 1: ``[B, C, h, w]`` or ``[N, C]``) → unit-scale latents."""
        mean, std = self._statistics_like(latents)
        return (latents - mean) / std

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`: what the tokenizer's ``decode`` takes."""
        mean, std = self._statistics_like(latents)
        return latents * std + mean

    def normalize_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Head interface: channel-last tokenizer latents ``[..., latent_dim]`` → unit-scale latents."""
        self._check_tokens(tokens, name="tokens", rank=None)
        return (tokens - self.latent_mean.to(tokens)) / self.latent_std.to(tokens)

    def denormalize_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize_tokens`: channel-last latents in the tokenizer's space."""
        self._check_tokens(tokens, name="tokens", rank=None)
        return tokens * self.latent_std.to(tokens) + self.latent_mean.to(tokens)

    def _statistics_like(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_channels(latents, "latents")
        shape = (1, -1) + (1,) * (latents.dim() - 2)
        return self.latent_mean.view(shape).to(latents), self.latent_std.view(shape).to(latents)

    def _check_channels(self, latents: torch.Tensor, name: str) -> None:
        if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
            raise TypeError(f"{name} must be a float tensor with {self.cfg.latent_dim} channels on dim 1")
        if latents.dim() < 2 or latents.shape[1] != self.cfg.latent_dim:
            raise ValueError(f"{name} must have {self.cfg.latent_dim} (latent_dim) channels on dim 1, got shape {tuple(latents.shape)}")

    def _check_tokens(self, tokens: torch.Tensor, *, name: str, rank: int | None = 3) -> None:
        """Channel-last latents: ``[B, n, latent_dim]`` (``rank=3``) or any ``[..., latent_dim]``."""
        C = self.cfg.latent_dim
        shape = f"[B, n, {C}]" if rank == 3 else f"[..., {C}]"
        if not isinstance(tokens, torch.Tensor) or not tokens.is_floating_point():
            got = tokens.dtype if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise TypeError(f"{name} must be a float tensor {shape} (channel-last latents), got {got}")
        if (rank is not None and tokens.dim() != rank) or tokens.dim() < 1 or tokens.shape[-1] != C:
            raise ValueError(f"{name} must have shape {shape} (latent_dim channels last), got {tuple(tokens.shape)}")

    # ---- training and sampling -------------------------------------------------------------
    def flow_loss(self, x1_NC: torch.Tensor, z_ND: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Flow-matching MSE on targets ``x1 [N, latent_dim]`` with conditions ``z [N, cond_dim]`` (one t per token)."""
        N = x1_NC.shape[0]
        t_N = _draw(torch.rand, (N,), generator, like=x1_NC)
        eps_NC = _draw(torch.randn, tuple(x1_NC.shape), generator, like=x1_NC)
        x_t_NC = t_N[:, None] * x1_NC + (1 - t_N[:, None]) * eps_NC
        v_NC = self.velocity(x_t_NC, t_N, z_ND)
        return F.mse_loss(v_NC.float(), (x1_NC - eps_NC).float())

    def loss(self, hidden_BLD: torch.Tensor, targets: torch.Tensor, *, mask: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Head interface: :meth:`flow_loss` of normalised latents ``targets [B, L, C]`` at the kept positions; logs ``flow``."""
        self._check_hidden(hidden_BLD, name="hidden_BLD", dim=self.cfg.cond_dim)
        self._check_tokens(targets, name="targets")
        B, L, _ = hidden_BLD.shape
        if tuple(targets.shape[:2]) != (B, L):
            raise ValueError(f"targets must cover the positions of hidden_BLD [{B}, {L}], got shape {tuple(targets.shape)}")
        keep_BL = self._position_mask(mask, (B, L))
        if keep_BL is None:
            x1_NC, z_ND = targets.flatten(0, 1), hidden_BLD.flatten(0, 1)
        else:
            x1_NC, z_ND = targets[keep_BL], hidden_BLD[keep_BL]
        loss = self.flow_loss(x1_NC, z_ND, generator=generator)
        return loss, {"flow": loss.item()}

    def sample(self, hidden: torch.Tensor, *, sampling: SamplingConfig | None = None, guidance_scale: float = 1.0,
               seeds_Bn: torch.Tensor | None = None, num_steps: int | None = None,
               noise_NC: torch.Tensor | None = None, guidance: float = 1.0,
               z_uncond_ND: torch.Tensor | None = None) -> torch.Tensor:
        """Euler-integrate from noise at t=0 to latents at t=1. Two call forms:

        - Head interface, ``sample(hidden_RnD, sampling=, guidance_scale=, seeds_Bn=)`` → normalised
          latents ``[B, n, C]``: ``sampling.num_flow_steps`` steps (None: ``DEFAULT_NUM_FLOW_STEPS``),
          row b's noise ``randn(n, C)`` from a CPU generator seeded ``seeds_Bn[b, 0]``, times
          ``sampling.temperature``; the uncond rows of R = 2B guide the velocity where ``guidance_scale != 1``.
        - Rows, ``sample(z_ND, num_steps=, noise_NC=, guidance=, z_uncond_ND=)`` → ``[N, C]``: from the
          given noise, guided as ``v_u + guidance * (v_c - v_u)`` when ``z_uncond_ND`` is given.
        """
        if sampling is None and seeds_Bn is None and guidance_scale == 1.0:
            return self._euler(hidden, num_steps=num_steps, noise_NC=noise_NC, guidance=guidance, z_uncond_ND=z_uncond_ND)
        if num_steps is not None or noise_NC is not None or guidance != 1.0 or z_uncond_ND is not None:
            raise TypeError("pass either sampling / guidance_scale / seeds_Bn (the Head interface) or "
                            "num_steps / noise_NC / guidance / z_uncond_ND (rows), not both")
        B, guided = self._guided_rows(hidden, dim=self.cfg.cond_dim, sampling=sampling, guidance_scale=guidance_scale,
                                      seeds_Bn=seeds_Bn)
        _, n, D = hidden.shape
        C = self.cfg.latent_dim
        rows = [torch.randn(n, C, generator=torch.Generator().manual_seed(int(seed))) for seed in seeds_Bn[:, 0].tolist()]
        noise_NC = torch.cat(rows).to(hidden.device) * sampling.temperature
        latents_NC = self._euler(
            hidden[:B].reshape(B * n, D),
            num_steps=sampling.num_flow_steps or DEFAULT_NUM_FLOW_STEPS,
            noise_NC=noise_NC,
            guidance=guidance_scale,
            z_uncond_ND=hidden[B:].reshape(B * n, D) if guided else None,
        )
        return latents_NC.view(B, n, C)

    def _euler(self, z_ND: torch.Tensor, *, num_steps: int | None, noise_NC: torch.Tensor | None, guidance: float,
               z_uncond_ND: torch.Tensor | None) -> torch.Tensor:
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
        _check_real("guidance", guidance)
        if z_uncond_ND is not None and z_uncond_ND.shape != z_ND.shape:
            raise ValueError(f"z_uncond must have the shape of z {tuple(z_ND.shape)}, got {tuple(z_uncond_ND.shape)}")
        if not isinstance(noise_NC, torch.Tensor) or tuple(noise_NC.shape) != (z_ND.shape[0], self.cfg.latent_dim):
            got = tuple(noise_NC.shape) if isinstance(noise_NC, torch.Tensor) else type(noise_NC).__name__
            raise ValueError(f"noise_NC must be a tensor [{z_ND.shape[0]}, {self.cfg.latent_dim}] (N, latent_dim), got {got}")
        x_NC = noise_NC.float()
        N = x_NC.shape[0]
        z_in = z_ND if z_uncond_ND is None else torch.cat([z_ND, z_uncond_ND])
        for step in range(num_steps):
            t_N = torch.full((z_in.shape[0],), step / num_steps, device=x_NC.device)
            x_in = x_NC if z_uncond_ND is None else torch.cat([x_NC, x_NC])
            v_NC = self.velocity(x_in, t_N, z_in).float()
            if z_uncond_ND is not None:
                v_cond, v_uncond = v_NC[:N], v_NC[N:]
                v_NC = v_cond + (guidance - 1.0) * (v_cond - v_uncond)
            x_NC = x_NC + v_NC / num_steps
        return x_NC

    # ---- GPT inputs ------------------------------------------------------------------------
    def embed(self, gpt: GPT, tokens: torch.Tensor, *, noise_level: torch.Tensor | None = None) -> torch.Tensor:
        """GPT inputs ``[B, n, dim]`` of latents ``[B, n, C]``: ``gpt.embed_inputs`` plus the noise level's embedding (1 = clean)."""
        self._check_tokens(tokens, name="tokens")
        B = tokens.shape[0]
        if noise_level is None:
            noise_level = torch.ones(B, device=tokens.device)
        elif not isinstance(noise_level, torch.Tensor) or tuple(noise_level.shape) != (B,):
            got = tuple(noise_level.shape) if isinstance(noise_level, torch.Tensor) else type(noise_level).__name__
            raise ValueError(f"noise_level must be None (clean) or a tensor [{B}] (one t per row), got {got}")
        x_BnD = gpt.embed_inputs(tokens.to(gpt.dtype))
        return x_BnD + self.context_time(noise_level).to(x_BnD.dtype).unsqueeze(1)

    def corrupt(self, tokens: torch.Tensor, *,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Noisy context (xAR): ``x_t = t * x + (1 - t) * eps`` with one ``t ~ U(0, 1)`` per row; returns ``(x_t, t [B])``."""
        self._check_tokens(tokens, name="tokens")
        t_B = _draw(torch.rand, (tokens.shape[0],), generator, like=tokens)
        eps = _draw(torch.randn, tuple(tokens.shape), generator, like=tokens)
        t = t_B.view(-1, 1, 1)
        return t * tokens + (1 - t) * eps, t_B


def _draw(fn: Callable[..., torch.Tensor], shape: tuple[int, ...], generator: torch.Generator | None, *,
          like: torch.Tensor) -> torch.Tensor:
    """``torch.rand`` / ``torch.randn`` on the generator's device, moved to ``like``'s device (float32)."""
    device = like.device if generator is None else generator.device
    return fn(shape, generator=generator, device=device).to(like.device)
