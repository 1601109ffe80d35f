"""Every Python block of README.md runs as written, in order, in one namespace: README and code cannot drift apart.

The blocks run in a scratch folder that links the repository's ``checkpoints/`` (the README loads the
shipped pipelines by their relative path), so what they save stays out of the repository.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks() -> list[tuple[int, str]]:
    """``(first line number, code)`` of each fenced Python block of the README."""
    text = README.read_text()
    return [(text.count("\n", 0, match.start(1)) + 1, match.group(1)) for match in BLOCK.finditer(text)]


@pytest.fixture(scope="module")
def namespace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One namespace for all blocks (later blocks use what earlier ones defined), run in a scratch folder."""
    scratch = tmp_path_factory.mktemp("readme")
    (scratch / "checkpoints").symlink_to(REPO / "checkpoints", target_is_directory=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(scratch)
        yield {"__name__": "readme"}


def test_the_readme_has_python_blocks():
    assert len(python_blocks()) >= 10


@pytest.mark.parametrize(("line", "code"), python_blocks(), ids=[f"README.md:{line}" for line, _ in python_blocks()])
def test_readme_block_runs(namespace, line, code):
    padded = "\n" * (line - 1) + code  # tracebacks then point at README.md's own line numbers
    exec(compile(padded, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
