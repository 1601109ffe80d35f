"""Input checks shared by the image tokenizers: one wording for every tokenizer's bad-input errors."""

from __future__ import annotations

import torch

__all__ = ["check_images", "check_ids_in_range", "check_index", "MAX_ABS_PIXEL"]

MAX_ABS_PIXEL = 1.5  # images live in [-1, 1]; beyond this they are in another range (e.g. [0, 255])


def check_images(images: torch.Tensor, *, channels: int = 3, size_multiple: int = 1, size: int | None = None,
                 name: str = "images") -> None:
    """Raise a clear error unless ``images`` is a float ``[B, channels, H, W]`` tensor in [-1, 1]."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        got = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise TypeError(f"{name} must be a float tensor [B, {channels}, H, W] in [-1, 1], got {got}")
    if images.dim() != 4 or images.shape[1] != channels:
        raise ValueError(f"{name} must have shape [B, {channels}, H, W], got {tuple(images.shape)}")
    height, width = images.shape[-2:]
    if size is not None and (height, width) != (size, size):
        raise ValueError(f"{name} must be {size}x{size} for this tokenizer, got {height}x{width}")
    if height % size_multiple or width % size_multiple:
        raise ValueError(f"{name} size {height}x{width} must be divisible by the downsampling factor {size_multiple}")
    peak = images.detach().abs().max().item() if images.numel() else 0.0
    if not peak <= MAX_ABS_PIXEL:
        raise ValueError(f"{name} must hold values in [-1, 1]; found |value| = {peak:.3g} (convert uint8 images with x / 127.5 - 1)")


def check_ids_in_range(ids: torch.Tensor, vocab_size: int, *, name: str = "ids") -> None:
    """Raise unless ``ids`` is an integer tensor with every entry in ``[0, vocab_size)``."""
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.dtype == torch.bool:
        got = ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise TypeError(f"{name} must be an integer tensor, got {got}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        bad = int(ids.max()) if int(ids.max()) >= vocab_size else int(ids.min())
        raise ValueError(f"{name} holds {bad}, outside the codebook [0, {vocab_size})")


def check_index(name: str, value: object, size: int) -> int:
    """Raise unless ``value`` is an int in ``[0, size)`` (a negative index would silently count from the end)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < size:
        raise ValueError(f"{name} must be an int in [0, {size}), got {value!r}")
    return value
