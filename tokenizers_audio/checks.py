"""Input checks shared by the audio codecs: one wording for every codec's bad-input errors."""

from __future__ import annotations

import torch

from tokenizers_visual.checks import check_ids_in_range, check_index

__all__ = ["check_audio", "check_lengths", "check_ids_in_range", "check_index", "require_positive_int", "MAX_ABS_SAMPLE"]

MAX_ABS_SAMPLE = 1.5  # waveforms live in [-1, 1]; beyond this they are in another range (e.g. int16)


def require_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_audio(audio: torch.Tensor, *, sample_rate: int, given_rate: int | None = None, min_samples: int = 1,
                name: str = "audio") -> None:
    """Raise a clear error unless ``audio`` is a finite, non-silent float ``[B, 1, T]`` waveform in [-1, 1].

    ``given_rate`` is the ``sample_rate=`` a caller passed: it must equal the codec's ``sample_rate``,
    since a codec only understands audio at the rate it was trained on.
    """
    if given_rate is not None and given_rate != sample_rate:
        raise ValueError(f"sample_rate={given_rate!r}, but this codec works at {sample_rate} Hz; resample first "
                         f"(mmgen.data.resample(audio, orig_rate={given_rate}, target_rate={sample_rate}))")
    if not isinstance(audio, torch.Tensor) or not audio.is_floating_point():
        got = audio.dtype if isinstance(audio, torch.Tensor) else type(audio).__name__
        raise TypeError(f"{name} must be a float waveform tensor [B, 1, T] in [-1, 1], got {got}")
    if audio.dim() != 3:
        raise ValueError(f"{name} must have shape [B, 1, T] (batch, mono channel, samples), got {tuple(audio.shape)}")
    if audio.shape[1] != 1:
        raise ValueError(f"{name} has {audio.shape[1]} channels, but this codec is mono: mix down first "
                         f"({name}.mean(dim=1, keepdim=True))")
    if audio.shape[-1] < min_samples:
        raise ValueError(f"{name} holds {audio.shape[-1]} samples, shorter than one frame of this codec ({min_samples} samples)")
    if audio.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch")
    if not bool(torch.isfinite(audio).all()):
        raise ValueError(f"{name} holds NaN or infinite samples")
    peak_B = audio.detach().abs().amax(dim=(1, 2))
    if float(peak_B.max()) > MAX_ABS_SAMPLE:
        raise ValueError(f"{name} must hold samples in [-1, 1]; found |sample| = {float(peak_B.max()):.3g} "
                         "(convert int16 audio with x / 32768)")
    silent = (peak_B == 0).nonzero().flatten().tolist()
    if silent:
        raise ValueError(f"{name} items {silent} are silent (all zeros): a codec learns nothing from them and a judge "
                         "reads nothing; drop them")


def check_lengths(lengths: torch.Tensor | None, *, batch: int, max_len: int, name: str = "lengths") -> torch.Tensor | None:
    """``lengths`` (samples per item of a padded batch) as a long tensor ``[B]`` in ``[1, max_len]``, or None."""
    if lengths is None:
        return None
    try:
        lengths = torch.as_tensor(lengths)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be {batch} integer sample counts (one per item), got {lengths!r}") from None
    if lengths.is_floating_point() or lengths.dtype == torch.bool or lengths.shape != (batch,):
        raise ValueError(f"{name} must be {batch} integer sample counts (one per item), got {lengths.dtype} {tuple(lengths.shape)}")
    if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > max_len):
        raise ValueError(f"{name} must lie in [1, {max_len}] (the padded length), got {lengths.tolist()}")
    return lengths.long()
