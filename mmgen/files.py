"""Write-then-rename: a file is either its old self or completely new, never half written."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

__all__ = ["write_atomically", "write_text_atomically"]


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a hidden sibling of ``path``, then rename it over ``path`` (atomic on one filesystem)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    tmp.replace(path)


def write_text_atomically(path: Path, text: str) -> None:
    """:func:`write_atomically` for a text file."""
    write_atomically(path, lambda tmp: tmp.write_text(text))
