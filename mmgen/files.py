"""Write-then-rename: a file is either its old self or completely new, never half written."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

__all__ = ["write_atomically", "write_text_atomically", "write_video"]

VIDEO_SUFFIXES = (".gif", ".mp4")


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a hidden sibling of ``path``, then rename it over ``path`` (atomic on one filesystem)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    tmp.replace(path)


def write_text_atomically(path: Path, text: str) -> None:
    """:func:`write_atomically` for a text file."""
    write_atomically(path, lambda tmp: tmp.write_text(text))


def write_video(path: Path, frames_THW3: Any, *, fps: float) -> None:
    """Frames ``[T, H, W, 3]`` in [0, 1] as an animated GIF (PIL, looping) or an H.264 MP4 (imageio + PyAV), by suffix."""
    import numpy as np

    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"path {str(path)!r}: a video is written as one of {VIDEO_SUFFIXES}")
    frames = (np.clip(np.asarray(frames_THW3, dtype=np.float32), 0.0, 1.0) * 255).round().astype(np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be an array [T, H, W, 3] in [0, 1], got shape {frames.shape}")
    if path.suffix.lower() == ".gif":
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        write_atomically(path, lambda tmp: images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                                                          duration=round(1000 / fps), loop=0))
        return
    write_atomically(path, lambda tmp: _write_mp4(tmp, frames, fps=fps))


def _write_mp4(path: Path, frames_THW3: Any, *, fps: float) -> None:
    """H.264 in yuv420p (what browsers play), which needs even sides: odd frames are padded by one black pixel."""
    from fractions import Fraction

    import av
    import numpy as np

    height, width = frames_THW3.shape[1:3]
    frames_THW3 = np.pad(frames_THW3, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)))
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = frames_THW3.shape[2], frames_THW3.shape[1], "yuv420p"
        for frame in frames_THW3:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
