"""SEANet 1D conv encoder / decoder (EnCodec's backbone), with a causal variant that streams.

The encoder maps a waveform ``[B, channels, T]`` to latents ``[B, dim, T / hop_length]`` through one
level per stride: residual units (ELU, dilated kernel-3 conv to half width, ELU, 1×1 conv back, plus
the input; dilations 1, 2, 4, … as in SEANet) then a strided conv of kernel ``2·stride`` that doubles
the width. The decoder mirrors it with transposed convs and has no output nonlinearity: losses see
the raw waveform, and a codec clamps to [-1, 1] when it decodes.

Every conv is padded so a stride ``s`` maps ``n`` samples to exactly ``n / s``: with ``causal=True``
all padding is on the left, so an output sample depends only on the past. The stack streams:
:meth:`SEANetEncoder.streaming` / :meth:`SEANetDecoder.streaming` give the offline result chunk by
chunk: each conv carries its last input samples as the left context of the next chunk, each
transposed conv the tail of its output that the next chunk's first frames overlap, each LSTM its state.

Switches for published codecs (``mmgen convert``), all off in our own presets. EnCodec's:
``pad_mode="reflect"`` (it reflects the signal into its padding; zeros are our default),
``conv_shortcut=True`` (a 1×1 conv on each residual unit's skip path instead of the identity) and
``lstm_layers=k`` (a k-layer LSTM with a skip connection at the narrowest point: after the last
downsampling conv of the encoder, after the first conv of the decoder). DAC's: ``activation="snake"``
(``x + sin²(αx)/α`` with a learned α per channel), residual units at full width (``compress=1``) with
kernel 7 (``residual_kernel_size``) and dilations 1, 3, 9 (``dilation_base=3``, ``num_res_blocks=3``),
a kernel-3 conv into the latent (``latent_kernel_size``), a decoder that starts wider than the encoder
ends (``decoder_channels``) and a ``tanh`` on its output (``final_activation``). SNAC's, on top of DAC's:
``depthwise`` convolutions (the residual units' dilated conv, the conv into the latent and the decoder's
first conv, which a 1×1 conv then widens), windowed self-attention at the narrowest point
(``attention_window``: LayerNorm, heads of 64 with rotary positions inside each window, a residual), no
activation before the latent conv (``latent_activation=False``) and a noise injection after each
upsampling (``noise``: ``x + ε · conv1×1(x)`` with ε ~ N(0, 1) per sample and time step, drawn from
torch's global generator as SNAC draws it; seed it for a repeatable decode).
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmgen.rope import NDRotaryEmbedding, apply_rotary

__all__ = ["SEANetDecoder", "SEANetEncoder", "SEANetStream"]

States = dict[nn.Module, Any]
PAD_MODES = ("zeros", "reflect")
ACTIVATIONS = ("elu", "snake")
FINAL_ACTIVATIONS = ("none", "tanh")


class Snake(nn.Module):
    """``x + sin²(α·x) / α`` with a learned α per channel (DAC's periodic activation), on ``[B, C, n]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x_BCn: torch.Tensor) -> torch.Tensor:
        return x_BCn + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x_BCn).pow(2)


def _activation(kind: str, channels: int) -> nn.Module:
    return Snake(channels) if kind == "snake" else nn.ELU()


def _pad(x_BCn: torch.Tensor, left: int, right: int, mode: str) -> torch.Tensor:
    """Pad the time axis; ``"reflect"`` on a signal too short to reflect zero-extends it first (as EnCodec does)."""
    if mode == "zeros" or not (left or right):
        return F.pad(x_BCn, (left, right))
    extra = max(0, max(left, right) - x_BCn.shape[-1] + 1)
    padded = F.pad(F.pad(x_BCn, (0, extra)), (left, right), mode="reflect")
    return padded[..., :padded.shape[-1] - extra]


def _maybe_weight_norm(module: nn.Module, enabled: bool) -> nn.Module:
    return nn.utils.parametrizations.weight_norm(module) if enabled else module


class _Conv(nn.Module):
    """Conv1d mapping ``n`` samples to ``n / stride``; ``context`` = the past samples one output needs."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, dilation: int = 1,
                 causal: bool, weight_norm: bool, pad_mode: str = "zeros", groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.conv = _maybe_weight_norm(nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation,
                                                 groups=groups, bias=bias), weight_norm)
        self.context = (kernel_size - 1) * dilation + 1 - stride
        self.left = self.context if causal else self.context - self.context // 2
        self.pad_mode = pad_mode

    def forward(self, x_BCn: torch.Tensor) -> torch.Tensor:
        return self.conv(_pad(x_BCn, self.left, self.context - self.left, self.pad_mode))

    def step(self, x_BCn: torch.Tensor, states: States) -> torch.Tensor:
        # the first chunk is padded as the offline pass pads the start; later ones carry the past samples
        buffer = torch.cat([states[self], x_BCn], dim=-1) if self in states else _pad(x_BCn, self.context, 0, self.pad_mode)
        states[self] = buffer[..., buffer.shape[-1] - self.context:]
        return self.conv(buffer)


class _ConvTranspose(nn.Module):
    """Transposed conv (kernel ``2·stride``) mapping ``t`` frames to ``t · stride`` samples."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, *, causal: bool, weight_norm: bool) -> None:
        super().__init__()
        self.conv = _maybe_weight_norm(nn.ConvTranspose1d(in_channels, out_channels, 2 * stride, stride=stride), weight_norm)
        self.stride = stride
        self.left = 0 if causal else stride - stride // 2  # of the `stride` extra output samples, trimmed here

    def forward(self, x_BCt: torch.Tensor) -> torch.Tensor:
        y = self.conv(x_BCt)
        return y[..., self.left: self.left + x_BCt.shape[-1] * self.stride]

    def step(self, x_BCt: torch.Tensor, states: States) -> torch.Tensor:
        # bias is added once per output sample, after the overlapping tails are summed
        y = F.conv_transpose1d(x_BCt, self.conv.weight, None, stride=self.stride)
        tail = states.get(self)
        if tail is not None:
            y = torch.cat([y[..., :self.stride] + tail, y[..., self.stride:]], dim=-1)
        n = x_BCt.shape[-1] * self.stride
        states[self] = y[..., n:]
        return y[..., :n] + self.conv.bias[:, None]


class _ResidualUnit(nn.Module):
    """``skip(x) + conv1x1(act(dilated_conv(act(x))))``, inside at ``width / compress`` (SEANet's 2, DAC's 1).

    ``skip`` is the identity, or a 1×1 conv with ``conv_shortcut`` (EnCodec's published models).
    """

    def __init__(self, width: int, *, dilation: int, conv_shortcut: bool = False, activation: str = "elu", compress: int = 2,
                 kernel_size: int = 3, depthwise: bool = False, **conv: Any) -> None:
        super().__init__()
        hidden = width // compress
        groups = width if depthwise else 1
        self.inner = _Stack(_activation(activation, width),
                            _Conv(width, hidden, kernel_size, dilation=dilation, groups=groups, **conv),
                            _activation(activation, hidden), _Conv(hidden, width, 1, **conv))
        self.shortcut = _Conv(width, width, 1, **conv) if conv_shortcut else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x if self.shortcut is None else self.shortcut(x)) + self.inner(x)

    def step(self, x: torch.Tensor, states: States) -> torch.Tensor:
        return (x if self.shortcut is None else self.shortcut.step(x, states)) + self.inner.step(x, states)


class _SkipLSTM(nn.Module):
    """``x + lstm(x)`` over time, on ``[B, C, n]`` (EnCodec's LSTM at the narrowest point of the stack)."""

    def __init__(self, width: int, num_layers: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(width, width, num_layers)

    def forward(self, x_BCn: torch.Tensor) -> torch.Tensor:
        x_nBC = x_BCn.permute(2, 0, 1)
        return (self.lstm(x_nBC)[0] + x_nBC).permute(1, 2, 0)

    def step(self, x_BCn: torch.Tensor, states: States) -> torch.Tensor:
        x_nBC = x_BCn.permute(2, 0, 1)
        y_nBC, states[self] = self.lstm(x_nBC, states.get(self))
        return (y_nBC + x_nBC).permute(1, 2, 0)


class _WindowedAttention(nn.Module):
    """``x + out(attention within windows of ``window`` steps)`` on ``[B, C, n]``: SNAC's local attention.

    LayerNorm, then heads of 64 channels whose queries and keys are rotated by their position inside the
    window (the half-split rotary of :mod:`mmgen.rope`), full attention inside each window.
    """

    head_dim = 64

    def __init__(self, width: int, window: int) -> None:
        super().__init__()
        if width % self.head_dim:
            raise ValueError(f"attention at width {width} needs a multiple of {self.head_dim} channels (heads of 64)")
        self.window, self.heads = window, width // self.head_dim
        self.norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.out = nn.Linear(width, width, bias=False)
        self.rotary = NDRotaryEmbedding(head_dim=self.head_dim)

    def forward(self, x_BCn: torch.Tensor) -> torch.Tensor:
        B, C, n = x_BCn.shape
        if n % self.window:
            raise ValueError(f"windowed attention needs a multiple of {self.window} frames at its depth, got {n}")
        q, k, v = self.qkv(self.norm(x_BCn.transpose(1, 2))).chunk(3, dim=-1)
        q, k, v = (t.reshape(B, n // self.window, self.window, self.heads, self.head_dim).permute(0, 3, 1, 2, 4)
                   .reshape(B * self.heads, n // self.window, self.window, self.head_dim) for t in (q, k, v))
        cos, sin = self.rotary(torch.arange(self.window, device=x_BCn.device, dtype=torch.float32).view(1, -1, 1))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v)  # [B·H, windows, window, head_dim]
        y = y.reshape(B, self.heads, n, self.head_dim).permute(0, 2, 1, 3).reshape(B, n, C)
        return x_BCn + self.out(y).transpose(1, 2)


class _Noise(nn.Module):
    """``x + ε · conv1×1(x)``, ε ~ N(0, 1) of shape ``[B, 1, n]`` from torch's global generator (SNAC's noise block)."""

    def __init__(self, width: int, *, weight_norm: bool) -> None:
        super().__init__()
        self.scale = _Conv(width, width, 1, causal=False, weight_norm=weight_norm, bias=False)

    def forward(self, x_BCn: torch.Tensor) -> torch.Tensor:
        noise_B1n = torch.randn(x_BCn.shape[0], 1, x_BCn.shape[-1], device=x_BCn.device, dtype=x_BCn.dtype)
        return x_BCn + noise_B1n * self.scale(x_BCn)


class _Stack(nn.Sequential):
    """``nn.Sequential`` whose ``step`` threads the streaming states through its stateful layers."""

    def step(self, x: torch.Tensor, states: States) -> torch.Tensor:
        for layer in self:
            x = layer.step(x, states) if hasattr(layer, "step") else layer(x)
        return x


def _check_sizes(*, channels: int, dim: int, base_channels: int, strides: Sequence[int], num_res_blocks: int,
                 kernel_size: int, pad_mode: str, lstm_layers: int, activation: str, dilation_base: int, compress: int,
                 residual_kernel_size: int, attention_window: int, causal: bool) -> tuple[int, ...]:
    for name, value in (("channels", channels), ("dim", dim), ("base_channels", base_channels), ("kernel_size", kernel_size),
                        ("dilation_base", dilation_base), ("compress", compress), ("residual_kernel_size", residual_kernel_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if isinstance(num_res_blocks, bool) or not isinstance(num_res_blocks, int) or num_res_blocks < 0:
        raise ValueError(f"num_res_blocks must be an int >= 0, got {num_res_blocks!r}")
    strides = tuple(strides)
    if not strides or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in strides):
        raise ValueError(f"strides must be a non-empty sequence of positive ints, got {strides!r}")
    if base_channels < compress:
        raise ValueError(f"base_channels must be >= compress={compress} (residual units work at width / compress), got {base_channels}")
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
    if isinstance(lstm_layers, bool) or not isinstance(lstm_layers, int) or lstm_layers < 0:
        raise ValueError(f"lstm_layers must be an int >= 0, got {lstm_layers!r}")
    if isinstance(attention_window, bool) or not isinstance(attention_window, int) or attention_window < 0:
        raise ValueError(f"attention_window must be an int >= 0, got {attention_window!r}")
    if attention_window and causal:
        raise ValueError("attention_window > 0 attends within whole windows, so it cannot be causal (streaming); "
                         "use causal=False")
    return strides


def _residual_units(width: int, num_res_blocks: int, *, dilation_base: int, **unit: Any) -> list[nn.Module]:
    return [_ResidualUnit(width, dilation=dilation_base**j, **unit) for j in range(num_res_blocks)]


def _narrowest(width: int, lstm_layers: int, attention_window: int) -> list[nn.Module]:
    """What sits at the narrowest point of the stack: EnCodec's LSTM, SNAC's windowed attention, or nothing."""
    return ([_SkipLSTM(width, lstm_layers)] if lstm_layers else []) + (
        [_WindowedAttention(width, attention_window)] if attention_window else [])


class SEANetEncoder(nn.Module):
    """Waveform ``[B, channels, T]`` → latents ``[B, dim, T // hop_length]`` (``T`` a multiple of ``hop_length``)."""

    def __init__(self, *, channels: int = 1, dim: int = 128, base_channels: int = 32, strides: Sequence[int] = (2, 4, 5, 8),
                 num_res_blocks: int = 1, kernel_size: int = 7, causal: bool = False, weight_norm: bool = True,
                 pad_mode: str = "zeros", conv_shortcut: bool = False, lstm_layers: int = 0, activation: str = "elu",
                 dilation_base: int = 2, compress: int = 2, residual_kernel_size: int = 3, depthwise: bool = False,
                 attention_window: int = 0, latent_kernel_size: int | None = None, latent_activation: bool = True) -> None:
        super().__init__()
        strides = _check_sizes(channels=channels, dim=dim, base_channels=base_channels, strides=strides,
                               num_res_blocks=num_res_blocks, kernel_size=kernel_size, pad_mode=pad_mode, lstm_layers=lstm_layers,
                               activation=activation, dilation_base=dilation_base, compress=compress,
                               residual_kernel_size=residual_kernel_size, attention_window=attention_window, causal=causal)
        conv = {"causal": causal, "weight_norm": weight_norm, "pad_mode": pad_mode}
        unit = {"conv_shortcut": conv_shortcut, "activation": activation, "dilation_base": dilation_base, "compress": compress,
                "kernel_size": residual_kernel_size, "depthwise": depthwise, **conv}
        layers: list[nn.Module] = [_Conv(channels, base_channels, kernel_size, **conv)]
        width = base_channels
        for stride in strides:
            layers += _residual_units(width, num_res_blocks, **unit)
            layers += [_activation(activation, width), _Conv(width, 2 * width, 2 * stride, stride=stride, **conv)]
            width *= 2
        if depthwise and dim != width:
            raise ValueError(f"depthwise=True maps the last width ({width}) to the latent depthwise: dim must equal it, got {dim}")
        layers += [*_narrowest(width, lstm_layers, attention_window), *([_activation(activation, width)] if latent_activation else []),
                   _Conv(width, dim, latent_kernel_size or kernel_size, groups=width if depthwise else 1, **conv)]
        self.net = _Stack(*layers)
        self.channels, self.dim, self.causal = channels, dim, causal
        self.strides = strides
        self.hop_length = prod(strides)

    def forward(self, audio_B1T: torch.Tensor) -> torch.Tensor:
        _check_input(audio_B1T, channels=self.channels, multiple=self.hop_length, name="audio_B1T", unit="samples")
        return self.net(audio_B1T)

    def streaming(self) -> SEANetStream:
        """A stream that encodes chunks (each a multiple of ``hop_length`` samples) as one offline pass would."""
        return SEANetStream(self, multiple=self.hop_length, channels=self.channels, unit="samples")


class SEANetDecoder(nn.Module):
    """Latents ``[B, dim, t]`` → waveform ``[B, channels, t · hop_length]``, unbounded unless ``final_activation="tanh"``."""

    def __init__(self, *, channels: int = 1, dim: int = 128, base_channels: int = 32, strides: Sequence[int] = (2, 4, 5, 8),
                 num_res_blocks: int = 1, kernel_size: int = 7, causal: bool = False, weight_norm: bool = True,
                 pad_mode: str = "zeros", conv_shortcut: bool = False, lstm_layers: int = 0, activation: str = "elu",
                 dilation_base: int = 2, compress: int = 2, residual_kernel_size: int = 3, depthwise: bool = False,
                 attention_window: int = 0, decoder_channels: int | None = None, final_activation: str = "none",
                 noise: bool = False) -> None:
        super().__init__()
        strides = _check_sizes(channels=channels, dim=dim, base_channels=base_channels, strides=strides,
                               num_res_blocks=num_res_blocks, kernel_size=kernel_size, pad_mode=pad_mode, lstm_layers=lstm_layers,
                               activation=activation, dilation_base=dilation_base, compress=compress,
                               residual_kernel_size=residual_kernel_size, attention_window=attention_window, causal=causal)
        if final_activation not in FINAL_ACTIVATIONS:
            raise ValueError(f"final_activation must be one of {FINAL_ACTIVATIONS}, got {final_activation!r}")
        conv = {"causal": causal, "weight_norm": weight_norm, "pad_mode": pad_mode}
        unit = {"conv_shortcut": conv_shortcut, "activation": activation, "dilation_base": dilation_base, "compress": compress,
                "kernel_size": residual_kernel_size, "depthwise": depthwise, **conv}
        width = decoder_channels or base_channels * 2 ** len(strides)
        if width % 2 ** len(strides):
            raise ValueError(f"decoder_channels={width} must halve {len(strides)} times (a multiple of {2 ** len(strides)})")
        entry = [_Conv(dim, dim, kernel_size, groups=dim, **conv), _Conv(dim, width, 1, **conv)] if depthwise else [
            _Conv(dim, width, kernel_size, **conv)]
        layers: list[nn.Module] = [*entry, *_narrowest(width, lstm_layers, attention_window)]
        for stride in reversed(strides):
            layers += [_activation(activation, width), _ConvTranspose(width, width // 2, stride, causal=causal, weight_norm=weight_norm)]
            width //= 2
            layers += [_Noise(width, weight_norm=weight_norm)] if noise else []
            layers += _residual_units(width, num_res_blocks, **unit)
        layers += [_activation(activation, width), _Conv(width, channels, kernel_size, **conv)]
        if final_activation == "tanh":
            layers.append(nn.Tanh())
        self.net = _Stack(*layers)
        self.channels, self.dim, self.causal = channels, dim, causal
        self.strides = strides
        self.hop_length = prod(strides)

    def forward(self, latents_BDt: torch.Tensor) -> torch.Tensor:
        _check_input(latents_BDt, channels=self.dim, multiple=1, name="latents_BDt", unit="frames")
        return self.net(latents_BDt)

    def streaming(self) -> SEANetStream:
        """A stream that decodes chunks of latent frames (any number ≥ 1) as one offline pass would."""
        return SEANetStream(self, multiple=1, channels=self.dim, unit="frames")


def _check_input(x: torch.Tensor, *, channels: int, multiple: int, name: str, unit: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() != 3 or x.shape[1] != channels:
        raise ValueError(f"{name} must have shape [B, {channels}, n], got {tuple(x.shape)}")
    if x.shape[-1] < 1 or x.shape[-1] % multiple:
        raise ValueError(f"{name} holds {x.shape[-1]} {unit}; need a positive multiple of {multiple}")


class SEANetStream:
    """Chunk-by-chunk pass through a causal SEANet stack; ``step`` outputs equal the offline pass's, in order.

    Runs without gradients (it is for inference) and keeps one batch size from the first chunk on.
    """

    def __init__(self, model: SEANetEncoder | SEANetDecoder, *, multiple: int, channels: int, unit: str) -> None:
        if not model.causal:
            raise ValueError(f"streaming needs a causal {type(model).__name__} (causal=True): a non-causal one looks ahead")
        self.model, self.multiple, self.channels, self.unit = model, multiple, channels, unit
        self.states: States = {}
        self.batch_size: int | None = None

    def step(self, chunk: torch.Tensor) -> torch.Tensor:
        _check_input(chunk, channels=self.channels, multiple=self.multiple, name="chunk", unit=self.unit)
        if self.batch_size is not None and chunk.shape[0] != self.batch_size:
            raise ValueError(f"chunk has batch size {chunk.shape[0]}, but this stream started with {self.batch_size}")
        self.batch_size = chunk.shape[0]
        with torch.no_grad():
            return self.model.net.step(chunk, self.states)
