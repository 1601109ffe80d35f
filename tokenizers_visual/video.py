"""Causal video tokenizer (MAGVIT-v2 / Cosmos style): discrete (FSQ) or continuous (KL) latent frames.

A clip ``[B, T, 3, H, W]`` in [-1, 1] with ``T = 1 + k·temporal_downsample`` frames becomes
``1 + k`` latent frames on an ``H/f × W/f`` grid: the first frame is encoded alone, every following
``temporal_downsample`` frames into one latent frame. Every layer is causal in time
(:mod:`.causal3d`), so

- the tokens of a prefix of frames are a prefix of the tokens (and decoding a prefix of latent
  frames gives a prefix of the video): generators may stop, continue or go frame by frame;
- an image is a 1-frame video: ``encode(images [B, 3, H, W])`` gives one latent frame, with the
  same weights.

Per frame, a 2D conv stack (``conv.ConvEncoder`` after a 2× space-to-depth, so no layer runs at full
resolution) brings a frame to the latent grid; causal 3D blocks then mix time there and halve it
``log2(temporal_downsample)`` times. The decoder mirrors it. ``bottleneck="fsq"`` quantises each
latent position with FSQ (vector-quantize-pytorch: one id in ``prod(fsq_levels)``, no codebook to
collapse); ``"kl"`` keeps a diagonal-Gaussian latent of ``latent_dim`` channels for continuous heads.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from vector_quantize_pytorch import FSQ

from mmgen.hub import PretrainedModel
from mmgen.protocol import TokenSpec
from mmgen.tokens import ContinuousContent, DiscreteContent

from .causal3d import CausalConv3d, CausalResBlock3d, TimeDownsample, TimeUpsample, per_frame
from .checks import MAX_ABS_PIXEL, check_ids_in_range
from .conv import ConvDecoder, ConvEncoder
from .kl import LOGVAR_RANGE, gaussian_kl
from .vq import REC_LOSSES, _psnr, _require_positive_int, reconstruction_loss

__all__ = ["CausalVideoConfig", "CausalVideoTokenizer", "BOTTLENECKS", "PADDINGS", "check_videos", "frame_psnr"]

BOTTLENECKS = ("fsq", "kl")
PADDINGS = ("zeros", "circular")  # circular: frames are tori, for content that wraps around the borders
SPATIAL_FACTORS = (4, 8, 16)
_CHANNEL_MULT = {2: [1, 2], 4: [1, 1, 2], 8: [1, 2, 2, 4], 16: [1, 1, 2, 2, 4]}  # per factor left for the conv stack


@dataclass
class CausalVideoConfig:
    """Size and training options of a :class:`CausalVideoTokenizer`.

    ``spatial_downsample`` (4, 8 or 16) and ``temporal_downsample`` (1, 2 or 4) fix the grid: 9 frames
    of 32×32 with 8 and 4 give ``3 × 4 × 4`` latent positions. ``num_frames`` is the clip length the
    token spec describes (generators make clips of it); encode and decode take any ``1 + k·temporal``.
    ``space_to_depth`` (2 or 1) folds 2×2 pixels into channels before the per-frame 2D stack (4× cheaper) or
    not (the image tokenizers' layout).
    ``channels`` × ``channel_mult`` are the widths of the per-frame 2D stack; ``time_blocks`` causal
    3D blocks run at the latent grid before and after each time resampling. ``padding="circular"`` pads
    every spatial convolution around the frame (a torus), for clips whose content wraps around the borders.
    """

    image_size: int = 32
    num_frames: int = 9
    spatial_downsample: int = 8
    temporal_downsample: int = 4
    space_to_depth: int = 2
    channels: int = 32
    channel_mult: list[int] | None = None
    num_res_blocks: int = 1
    time_blocks: int = 1
    bottleneck: str = "fsq"
    fsq_levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])
    latent_dim: int = 8
    kl_weight: float = 1e-4
    rec_loss: str = "l1"
    padding: str = "zeros"

    def __post_init__(self) -> None:
        for name in ("image_size", "num_frames", "channels", "num_res_blocks"):
            _require_positive_int(name, getattr(self, name))
        if self.spatial_downsample not in SPATIAL_FACTORS:
            raise ValueError(f"spatial_downsample must be one of {list(SPATIAL_FACTORS)}, got {self.spatial_downsample!r}")
        if self.space_to_depth not in (1, 2):
            raise ValueError(f"space_to_depth must be 1 or 2, got {self.space_to_depth!r}")
        if self.temporal_downsample not in (1, 2, 4):
            raise ValueError(f"temporal_downsample must be 1, 2 or 4, got {self.temporal_downsample!r}")
        if self.image_size % self.spatial_downsample:
            raise ValueError(f"image_size={self.image_size} must be divisible by spatial_downsample={self.spatial_downsample}")
        if (self.num_frames - 1) % self.temporal_downsample:
            raise ValueError(f"num_frames must be 1 + k * temporal_downsample ({self.temporal_downsample}), got {self.num_frames}")
        stack_factor = self.spatial_downsample // self.space_to_depth
        want = len(_CHANNEL_MULT[stack_factor])
        mult = list(_CHANNEL_MULT[stack_factor] if self.channel_mult is None else self.channel_mult)
        if len(mult) != want or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in mult):
            raise ValueError(f"channel_mult must be {want} positive ints for spatial_downsample={self.spatial_downsample} "
                             f"with space_to_depth={self.space_to_depth}, got {self.channel_mult!r}")
        self.channel_mult = mult
        if isinstance(self.time_blocks, bool) or not isinstance(self.time_blocks, int) or self.time_blocks < 0:
            raise ValueError(f"time_blocks must be an int >= 0, got {self.time_blocks!r}")
        if self.bottleneck not in BOTTLENECKS:
            raise ValueError(f"bottleneck must be one of {BOTTLENECKS}, got {self.bottleneck!r}")
        levels = list(self.fsq_levels)
        if not levels or any(isinstance(v, bool) or not isinstance(v, int) or v < 3 for v in levels):
            raise ValueError(f"fsq_levels must be a non-empty list of ints >= 3, got {self.fsq_levels!r}")
        self.fsq_levels = levels
        _require_positive_int("latent_dim", self.latent_dim)
        if not float(self.kl_weight) >= 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight!r}")
        if self.rec_loss not in REC_LOSSES:
            raise ValueError(f"rec_loss must be one of {REC_LOSSES}, got {self.rec_loss!r}")
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {self.padding!r}")

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.spatial_downsample
        return side, side

    @property
    def code_dim(self) -> int:
        """Channels of one latent position: FSQ's code dimension or the KL latent's."""
        return len(self.fsq_levels) if self.bottleneck == "fsq" else self.latent_dim

    def latent_frames(self, num_frames: int) -> int:
        return 1 + (num_frames - 1) // self.temporal_downsample


def check_videos(videos: object, *, image_size: int, temporal: int, name: str = "videos") -> torch.Tensor:
    """``videos`` as a float ``[B, T, 3, S, S]`` tensor in [-1, 1] (an image batch ``[B, 3, S, S]`` is 1 frame).

    A list is stacked first (a list of clips ``[T, 3, S, S]`` is a batch of clips, a list of images a batch of
    images), so clips or frames of different sizes are named as such.
    """
    if isinstance(videos, (list, tuple)):
        if not videos or not all(isinstance(v, torch.Tensor) for v in videos):
            raise TypeError(f"{name}: a list must hold tensors (clips [T, 3, H, W] or images [3, H, W]), got "
                            f"{[type(v).__name__ for v in videos]}")
        sizes = sorted({tuple(v.shape) for v in videos})
        if len(sizes) > 1:
            raise ValueError(f"{name}: all clips / frames must have one size, got sizes {sizes}")
        videos = torch.stack(list(videos))
    if not isinstance(videos, torch.Tensor) or not videos.is_floating_point():
        got = videos.dtype if isinstance(videos, torch.Tensor) else type(videos).__name__
        raise TypeError(f"{name} must be a float tensor [B, T, 3, H, W] in [-1, 1], got {got} (map uint8 with x / 127.5 - 1)")
    if videos.dim() == 4:
        videos = videos[:, None]
    if videos.dim() != 5:
        raise ValueError(f"{name} must have shape [B, T, 3, H, W] (or [B, 3, H, W] images), got {tuple(videos.shape)}")
    B, T, C, H, W = videos.shape
    if C != 3:
        hint = " — channels last? permute to [B, T, 3, H, W]" if W == 3 or H == 3 else ""
        raise ValueError(f"{name} must have 3 colour channels at dim 2, [B, T, 3, H, W], got {tuple(videos.shape)}{hint}")
    if (H, W) != (image_size, image_size):
        raise ValueError(f"{name}: frames must be {image_size}x{image_size} for this tokenizer, got {H}x{W}")
    if T < 1:
        raise ValueError(f"{name} must hold at least one frame, got {T}")
    if (T - 1) % temporal:
        near = sorted({1 + temporal * ((T - 1) // temporal), 1 + temporal * -(-(T - 1) // temporal)})
        raise ValueError(f"{name}: this tokenizer takes 1 + k*{temporal} frames (1, {1 + temporal}, {1 + 2 * temporal}, ...), "
                         f"got {T}; the nearest are {' or '.join(map(str, near))}")
    if bool(torch.isnan(videos).any()):
        raise ValueError(f"{name} holds NaN pixels")
    peak = float(videos.detach().abs().max()) if videos.numel() else 0.0
    if not peak <= MAX_ABS_PIXEL:
        raise ValueError(f"{name} must hold values in [-1, 1]; found |value| = {peak:.3g} (map uint8 with x / 127.5 - 1)")
    return videos


class CausalVideoTokenizer(PretrainedModel):
    """Clips ``[B, T, 3, H, W]`` in [-1, 1] ↔ ``1 + (T − 1)/temporal`` latent frames on an ``H/f × W/f`` grid.

    Native tokens: ids ``[B, t, h, w]`` (``fsq``) or latents ``[B, latent_dim, t, h, w]`` (``kl``).
    Train with ``loss, logs = tok.loss(videos)``.
    """

    config_class = CausalVideoConfig
    modality = "video"

    def __init__(self, config: CausalVideoConfig | dict) -> None:
        super().__init__()
        cfg = self._register_typed_config(config)
        self.cfg = cfg
        folded = 3 * cfg.space_to_depth**2
        width = cfg.channels * cfg.channel_mult[-1]
        pad = {"padding_mode": cfg.padding}
        backbone = {"channels": cfg.channels, "channel_mult": cfg.channel_mult, "num_res_blocks": cfg.num_res_blocks, **pad}
        stages = int(math.log2(cfg.temporal_downsample))
        self.frame_encoder = ConvEncoder(in_channels=folded, out_channels=width, **backbone)
        self.time_encoder = nn.Sequential(*[m for _ in range(stages) for m in self._time_blocks(width) + [TimeDownsample(width, **pad)]],
                                          *self._time_blocks(width))
        out = 2 * cfg.latent_dim if cfg.bottleneck == "kl" else cfg.code_dim
        self.to_latent = CausalConv3d(width, out, kernel=(1, 1))
        if cfg.bottleneck == "fsq":
            # FSQ bounds latents with tanh: start them small, where its straight-through gradient is alive
            nn.init.trunc_normal_(self.to_latent.conv.weight, std=0.02)
            # FSQ only has buffers, built with .item(): build it on the CPU when models are built on the meta device
            on_meta = torch.empty(0).device.type == "meta"
            with torch.device("cpu") if on_meta else contextlib.nullcontext():
                self.fsq = FSQ(levels=cfg.fsq_levels)
        self.from_latent = CausalConv3d(cfg.code_dim, width, kernel=(1, 1))
        self.time_decoder = nn.Sequential(*self._time_blocks(width),
                                          *[m for _ in range(stages) for m in [TimeUpsample(width, **pad)] + self._time_blocks(width)])
        self.frame_decoder = ConvDecoder(in_channels=width, out_channels=folded, **backbone)

    def _time_blocks(self, width: int) -> list[nn.Module]:
        return [CausalResBlock3d(width, padding_mode=self.cfg.padding) for _ in range(self.cfg.time_blocks)]

    # ---- description -------------------------------------------------------------------------
    @property
    def codebook_size(self) -> int | None:
        return int(math.prod(self.cfg.fsq_levels)) if self.cfg.bottleneck == "fsq" else None

    @property
    def is_continuous(self) -> bool:
        return self.cfg.bottleneck == "kl"

    def grid_shape(self, num_frames: int | None = None) -> tuple[int, int, int]:
        """``(t, h, w)`` latent positions of a clip of ``num_frames`` (default: the configured clip length)."""
        frames = self.cfg.num_frames if num_frames is None else num_frames
        return (self.cfg.latent_frames(frames), *self.cfg.grid)

    def num_frames_for(self, latent_frames: int) -> int:
        """Frames that ``latent_frames`` latent frames decode to."""
        return 1 + (latent_frames - 1) * self.cfg.temporal_downsample

    # ---- tokenizer protocol (mmgen.protocol) ---------------------------------------------------
    def token_spec(self) -> TokenSpec:
        """A ``t × h × w`` grid: one id per position (fsq) or a ``latent_dim`` vector (kl)."""
        content = ContinuousContent(self.cfg.latent_dim) if self.is_continuous else DiscreteContent((self.codebook_size,))
        return TokenSpec(content=content, shape=self.grid_shape())

    def to_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, t, h, w]`` as they are; latents ``[B, C, t, h, w]`` → ``[B, t, h, w, C]``."""
        return tokens.permute(0, 2, 3, 4, 1) if self.is_continuous else tokens

    def from_positions(self, positions: torch.Tensor) -> torch.Tensor:
        return positions.permute(0, 4, 1, 2, 3) if self.is_continuous else positions

    # ---- encode / decode -----------------------------------------------------------------------
    def _checked(self, videos: object) -> torch.Tensor:
        return check_videos(videos, image_size=self.cfg.image_size, temporal=self.cfg.temporal_downsample)

    def _features(self, x_BTCHW: torch.Tensor) -> torch.Tensor:
        """Pre-bottleneck latents ``[B, code_dim (×2 for kl), t, h, w]`` of checked clips (:meth:`_checked`)."""
        x_BCTHW = F.pixel_unshuffle(x_BTCHW.flatten(0, 1), self.cfg.space_to_depth).unflatten(0, x_BTCHW.shape[:2]).transpose(1, 2)
        return self.to_latent(self.time_encoder(per_frame(self.frame_encoder, x_BCTHW)))

    def _posterior(self, x_BTCHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self._features(x_BTCHW).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def _quantize(self, z_BCthw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FSQ codes ``[B, C, t, h, w]`` (straight-through) and ids ``[B, t, h, w]``."""
        return self.fsq(z_BCthw)  # FSQ reads a tensor of rank >= 4 as channels-first

    def encode(self, videos: object) -> torch.Tensor:
        """Clips (or images) → ids ``[B, t, h, w]`` (fsq) or the posterior mean ``[B, latent_dim, t, h, w]`` (kl)."""
        with torch.no_grad():
            x_BTCHW = self._checked(videos)
            if self.is_continuous:
                return self._posterior(x_BTCHW)[0]
            return self._quantize(self._features(x_BTCHW))[1]

    def _check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The latent codes ``[B, C, t, h, w]`` the decoder takes, from ids or latents, or a clear error."""
        h, w = self.cfg.grid
        if self.is_continuous:
            if not isinstance(tokens, torch.Tensor) or not tokens.is_floating_point():
                got = tokens.dtype if isinstance(tokens, torch.Tensor) else type(tokens).__name__
                raise TypeError(f"latents must be a float tensor [B, {self.cfg.latent_dim}, t, {h}, {w}], got {got}")
            if (tokens.dim() != 5 or tokens.shape[1] != self.cfg.latent_dim or tuple(tokens.shape[3:]) != (h, w)
                    or tokens.shape[2] < 1):
                raise ValueError(f"latents must have shape [B, {self.cfg.latent_dim}, t >= 1, {h}, {w}], got {tuple(tokens.shape)}")
            return tokens
        check_ids_in_range(tokens, self.codebook_size)
        if tokens.dim() != 4 or tuple(tokens.shape[2:]) != (h, w) or tokens.shape[1] < 1:
            raise ValueError(f"ids must have shape [B, t >= 1, {h}, {w}] (latent frames of the tokenizer's grid), got {tuple(tokens.shape)}")
        return self.fsq.indices_to_codes(tokens.long()).to(self.from_latent.conv.weight.dtype)  # channels-first, as _quantize

    def _decode_codes(self, codes_BCthw: torch.Tensor) -> torch.Tensor:
        y_BCThw = per_frame(self.frame_decoder, self.time_decoder(self.from_latent(codes_BCthw)))
        B, C, T = y_BCThw.shape[:3]
        return F.pixel_shuffle(y_BCThw.transpose(1, 2).flatten(0, 1), self.cfg.space_to_depth).unflatten(0, (B, T))

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, t, h, w]`` / latents ``[B, C, t, h, w]`` → clips ``[B, 1 + (t − 1)·temporal, 3, H, W]`` in [-1, 1]."""
        return self._decode_codes(self._check_tokens(tokens)).clamp(-1, 1)

    # ---- training ------------------------------------------------------------------------------
    def loss(self, videos: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Per-pixel reconstruction (+ ``kl_weight``·KL for kl) and logs: PSNR of the first frame and of the rest."""
        target = self._checked(videos)
        if self.is_continuous:
            mean, logvar = self._posterior(target)
            codes = mean + (0.5 * logvar).exp() * torch.randn_like(mean) if self.training else mean
            extra = gaussian_kl(mean, logvar)
        else:
            codes, ids = self._quantize(self._features(target))
            extra = torch.zeros(())
        recon = self._decode_codes(codes)
        rec = reconstruction_loss(recon, target, self.cfg.rec_loss)
        logs = {"rec": rec.item(), **frame_psnr(recon.detach().clamp(-1, 1), target)}
        if self.is_continuous:
            logs.update(kl=extra.item(), latent_std=mean.detach().std().item())
        else:
            logs["usage"] = ids.unique().numel() / self.codebook_size
        return rec + self.cfg.kl_weight * extra, logs


def frame_psnr(recon_BTCHW: torch.Tensor, target_BTCHW: torch.Tensor) -> dict[str, float]:
    """PSNR (dB, peak-to-peak 2) of the first frame (``psnr_first``) and of the later frames (``psnr_rest``)."""
    logs = {"psnr_first": _psnr(recon_BTCHW[:, 0], target_BTCHW[:, 0])}
    if recon_BTCHW.shape[1] > 1:
        logs["psnr_rest"] = _psnr(recon_BTCHW[:, 1:], target_BTCHW[:, 1:])
    return logs
