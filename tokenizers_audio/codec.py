"""What the single-codebook and multi-scale codecs share: their config fields, waveform handling and quantiser helpers.

:class:`CodecConfig` holds the audio, SEANet encoder, codebook and loss-weight fields; :class:`WaveformCodecMixin`
the tokenizer-protocol properties, input preparation (checks, right padding, zeroing beyond ``lengths``) and the
reconstruction terms (waveform L1, multi-resolution STFT, mel). The quantiser helpers wrap vector-quantize-pytorch's
``VectorQuantize``: training forwards go through the library, eval lookups are done here and change no state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from vector_quantize_pytorch import VectorQuantize

from mmgen.spectral import DEFAULT_RESOLUTIONS, mel_loss, multi_resolution_stft_loss

from .checks import check_audio, check_lengths, require_positive_int
from .frontends import FrontendFields, decode_for_loss

__all__ = ["CodecConfig", "WaveformCodecMixin", "build_codebook", "quantize_frames", "waveform_terms"]



@dataclass
class CodecConfig(FrontendFields):
    """Fields every codec of this package shares: audio, SEANet encoder, codebooks and loss weights.

    ``clip_samples`` is the training clip; the token spec (what a generator draws) is sized from it.
    ``strides`` are the SEANet downsampling factors (their product is ``hop_length``); ``weight_norm`` on its
    convolutions speeds early training a lot (as in EnCodec), and is part of the saved config because it
    changes the weights' names. Codebooks learn by
    EMA (``ema_decay``) after a k-means init; a code whose EMA hit count per step falls below
    ``dead_code_fraction`` of a uniform share (frames per step / ``codebook_size``) is replaced by a
    frame of the batch, which revives a codebook that collapsed while the encoder moved.
    ``codebook_dim`` (None: ``dim``) factorises the lookup through a projection; ``cosine_codebooks`` picks
    codes by cosine similarity (SNAC's l2-normalised lookup; the code vectors themselves are used as stored). The loss is ``l1_weight``·waveform L1 + ``stft_weight``·multi-resolution STFT (at
    ``stft_resolutions``) + ``mel_weight``·log-mel L1 + ``frame_weight``·the ``vocos-if`` decoder's frame loss + the
    commitment loss times ``commitment_weight``. Encoder and decoder kinds: :mod:`tokenizers_audio.frontends`.
    """

    sample_rate: int = 16000
    clip_samples: int = 16000
    strides: tuple[int, ...] = (2, 4, 5, 8)
    base_channels: int = 32
    dim: int = 64
    num_res_blocks: int = 1
    kernel_size: int = 7
    weight_norm: bool = True
    codebook_size: int = 4096
    codebook_dim: int | None = None
    cosine_codebooks: bool = False
    ema_decay: float = 0.8
    kmeans_iters: int = 10
    dead_code_fraction: float = 0.25
    commitment_weight: float = 1.0
    l1_weight: float = 1.0
    stft_weight: float = 1.0
    mel_weight: float = 1.0
    stft_resolutions: tuple[tuple[int, int], ...] = DEFAULT_RESOLUTIONS
    mel_n_fft: int = 1024
    mel_hop_length: int = 256
    n_mels: int = 64

    def __post_init__(self) -> None:
        self.strides = tuple(self.strides)
        self.stft_resolutions = tuple(tuple(r) for r in self.stft_resolutions)
        for name in ("sample_rate", "clip_samples", "base_channels", "dim", "num_res_blocks", "kernel_size",
                     "codebook_size", "kmeans_iters", "mel_n_fft", "mel_hop_length", "n_mels"):
            require_positive_int(name, getattr(self, name))
        if self.codebook_dim is not None:
            require_positive_int("codebook_dim", self.codebook_dim)
        if not self.strides:
            raise ValueError("strides must name at least one downsampling factor")
        for i, stride in enumerate(self.strides):
            require_positive_int(f"strides[{i}]", stride)
        if self.clip_samples < self.hop_length:
            raise ValueError(f"clip_samples={self.clip_samples} must hold at least one frame (hop_length={self.hop_length})")
        if not self.stft_resolutions or any(len(r) != 2 for r in self.stft_resolutions):
            raise ValueError(f"stft_resolutions must be (n_fft, hop_length) pairs, got {self.stft_resolutions!r}")
        for i, (n_fft, hop) in enumerate(self.stft_resolutions):
            require_positive_int(f"stft_resolutions[{i}][0]", n_fft)
            require_positive_int(f"stft_resolutions[{i}][1]", hop)
        if not 0.0 < float(self.ema_decay) < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay!r}")
        for name in ("dead_code_fraction", "commitment_weight", "l1_weight", "stft_weight", "mel_weight"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        self.check_frontend(hop_length=self.hop_length)

    @property
    def hop_length(self) -> int:
        return math.prod(self.strides)

    @property
    def clip_frames(self) -> int:
        """Latent frames of a training clip (padded up to whole frames)."""
        return -(-self.clip_samples // self.hop_length)


def build_codebook(cfg: CodecConfig) -> VectorQuantize:
    """One EMA codebook over ``cfg.dim``-channel frames (k-means init, dead-code expiry, rotation-trick gradients)."""
    return VectorQuantize(
        dim=cfg.dim, codebook_size=cfg.codebook_size, codebook_dim=cfg.codebook_dim, decay=cfg.ema_decay,
        kmeans_init=True, kmeans_iters=cfg.kmeans_iters, threshold_ema_dead_code=cfg.dead_code_fraction,
        commitment_weight=cfg.commitment_weight, use_cosine_sim=cfg.cosine_codebooks,
    )


def _scale_dead_code_threshold(vq: VectorQuantize, *, frames: int, fraction: float) -> None:
    """Set the library's absolute dead-code threshold to ``fraction`` of this step's uniform share of hits.

    vector-quantize-pytorch compares each code's EMA hit count (summed over processes) with a fixed
    number, so the right number depends on the batch: scaled here, one setting serves every batch size,
    level rate and codebook size. A replaced code starts at the threshold, as in the library.
    """
    codebook = vq._codebook
    world = dist.get_world_size() if codebook.use_ddp and dist.is_initialized() else 1
    codebook.threshold_ema_dead_code = codebook.reset_cluster_size = fraction * frames * world / vq.codebook_size


def quantize_frames(vq: VectorQuantize, x_BnD: torch.Tensor, *, update: bool,
                    dead_code_fraction: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frames ``[B, n, dim]`` → quantised frames, ids ``[B, n]`` and the weighted commitment loss.

    ``update`` runs the library's training forward (k-means init, EMA, dead codes below
    ``dead_code_fraction`` of a uniform share; gradients reach the input). Otherwise the nearest code is
    looked up here, changing nothing, so encoding is a pure function.
    """
    if update:
        if dead_code_fraction > 0:
            _scale_dead_code_threshold(vq, frames=x_BnD.shape[0] * x_BnD.shape[1], fraction=dead_code_fraction)
        q_BnD, ids_Bn, commit = vq(x_BnD)
        return q_BnD, ids_Bn, commit
    proj_BnC = vq.project_in(x_BnD)
    codebook_VC = vq.codebook
    if vq.use_cosine_sim:
        ids_Bn = (F.normalize(proj_BnC, dim=-1) @ F.normalize(codebook_VC, dim=-1).T).argmax(dim=-1)
    else:
        dist_BnV = proj_BnC.square().sum(-1, keepdim=True) - 2 * proj_BnC @ codebook_VC.T + codebook_VC.square().sum(-1)
        ids_Bn = dist_BnV.argmin(dim=-1)
    codes_BnC = codebook_VC[ids_Bn]
    commit = F.mse_loss(proj_BnC, codes_BnC) * vq.commitment_weight
    return vq.project_out(codes_BnC), ids_Bn, commit


def waveform_terms(rec_B1T: torch.Tensor, audio_B1T: torch.Tensor, *, weights: dict[str, float], sample_rate: int,
                   stft_resolutions: tuple[tuple[int, int], ...] = DEFAULT_RESOLUTIONS, **mel_options: int) -> dict[str, torch.Tensor]:
    """Waveform L1, multi-resolution STFT and log-mel L1 between a reconstruction and its target (unweighted).

    A term whose entry in ``weights`` is 0 is still computed for the logs, without gradient (no backward
    pass through it). ``mel_options`` go to :func:`mmgen.spectral.mel_loss`.
    """
    terms: dict[str, Callable[[], torch.Tensor]] = {
        "l1": lambda: F.l1_loss(rec_B1T, audio_B1T),
        "stft": lambda: multi_resolution_stft_loss(rec_B1T, audio_B1T, resolutions=stft_resolutions),
        "mel": lambda: mel_loss(rec_B1T, audio_B1T, sample_rate=sample_rate, **mel_options),
    }
    out = {}
    for name, term in terms.items():
        with torch.set_grad_enabled(torch.is_grad_enabled() and weights[name] != 0):
            out[name] = term()
    return out


class WaveformCodecMixin:
    """Properties, input preparation and reconstruction terms shared by the codecs (needs ``self.cfg`` and ``self.decoder``)."""

    cfg: CodecConfig
    modality = "audio"

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @property
    def hop_length(self) -> int:
        """Waveform samples per latent frame (the product of the SEANet strides)."""
        return self.cfg.hop_length

    @property
    def codebook_size(self) -> int:
        return self.cfg.codebook_size

    @property
    def frame_rate(self) -> float:
        """Latent frames per second (the finest token rate)."""
        return self.cfg.sample_rate / self.cfg.hop_length

    def _encoder_args(self) -> dict:
        cfg = self.cfg
        return dict(channels=1, dim=cfg.dim, base_channels=cfg.base_channels, strides=cfg.strides,
                    num_res_blocks=cfg.num_res_blocks, kernel_size=cfg.kernel_size, weight_norm=cfg.weight_norm)

    def prepare_audio(self, audio_B1T: torch.Tensor, *, lengths: torch.Tensor | None = None,
                      sample_rate: int | None = None) -> torch.Tensor:
        """Check ``audio`` ``[B, 1, T]``, zero it beyond each item's ``lengths`` and right-pad T to whole frames."""
        check_audio(audio_B1T, sample_rate=self.cfg.sample_rate, given_rate=sample_rate, min_samples=self.hop_length)
        lengths_B = check_lengths(lengths, batch=audio_B1T.shape[0], max_len=audio_B1T.shape[-1])
        if lengths_B is not None:
            keep_BT = torch.arange(audio_B1T.shape[-1], device=audio_B1T.device) < lengths_B.to(audio_B1T.device)[:, None]
            audio_B1T = torch.where(keep_BT[:, None], audio_B1T, torch.zeros((), dtype=audio_B1T.dtype, device=audio_B1T.device))
        return F.pad(audio_B1T, (0, -audio_B1T.shape[-1] % self.hop_length))

    def frame_lengths(self, lengths: torch.Tensor, *, max_len: int) -> torch.Tensor:
        """Latent frames ``[B]`` that hold each item's ``lengths`` samples (of a batch padded to ``max_len``)."""
        lengths_B = check_lengths(lengths, batch=len(lengths), max_len=max_len)
        return -(-lengths_B // self.hop_length)

    def reconstruction_terms(self, rec_B1T: torch.Tensor, audio_B1T: torch.Tensor) -> dict[str, torch.Tensor]:
        """:func:`waveform_terms` at this codec's weights, STFT resolutions and mel settings."""
        cfg = self.cfg
        return waveform_terms(rec_B1T, audio_B1T, weights={"l1": cfg.l1_weight, "stft": cfg.stft_weight, "mel": cfg.mel_weight},
                              sample_rate=cfg.sample_rate, stft_resolutions=cfg.stft_resolutions, n_fft=cfg.mel_n_fft,
                              hop_length=cfg.mel_hop_length, n_mels=cfg.n_mels)

    def decode_with_terms(self, latents_BDt: torch.Tensor, audio_B1T: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Decode training latents once: the unclamped reconstruction and its loss terms (with ``"frames"`` if weighted)."""
        rec_B1T, frames = decode_for_loss(self.decoder, latents_BDt, audio_B1T, self.cfg.frame_weight)
        terms = self.reconstruction_terms(rec_B1T, audio_B1T)
        if frames is not None:
            terms["frames"] = frames
        return rec_B1T, terms

    def weighted_loss(self, terms: dict[str, torch.Tensor], commit: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        total = cfg.l1_weight * terms["l1"] + cfg.stft_weight * terms["stft"] + cfg.mel_weight * terms["mel"] + commit
        return total + cfg.frame_weight * terms["frames"] if "frames" in terms else total
