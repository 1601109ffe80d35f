"""`import mmgen` is all a user needs: it re-exports the public names of the four packages.

The names resolve on first use (:mod:`mmgen.lazy`): importing a package, or ``mmgen --help``, loads none of
the heavy dependencies, which is checked in fresh interpreters, by what lands in ``sys.modules``.
"""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import mmgen

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["mmgen", "pipelines", "tokenizers_visual", "tokenizers_audio"]
DIFFUSERS_AND_CO = {"diffusers", "transformers", "accelerate", "triton", "huggingface_hub", "safetensors", "scipy",
                    "soundfile", "vector_quantize_pytorch", "einx", "PIL"}
HEAVY = {"torch", "numpy", *DIFFUSERS_AND_CO}


@pytest.mark.parametrize("package", ["tokenizers_visual", "tokenizers_audio", "pipelines"])
def test_sibling_public_names_are_reexported(package):
    module = importlib.import_module(package)
    for name in getattr(module, "__all__", ()):
        assert getattr(mmgen, name) is getattr(module, name)


def test_core_names_and_unknown_attribute():
    for name in mmgen.__all__:
        assert getattr(mmgen, name) is not None
    assert "VQImageTokenizer" in dir(mmgen)
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        mmgen.NoSuchThing


def test_submodules_are_attributes_and_dunder_probes_fail_fast():
    assert mmgen.hub is importlib.import_module("mmgen.hub") and "gpt" in dir(mmgen)
    with pytest.raises(AttributeError, match="__wrapped__"):
        mmgen.__wrapped__


def loaded_packages(code: str) -> set[str]:
    """The top-level packages in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    report = "import sys; print(' '.join(sorted({name.split('.')[0] for name in sys.modules})))"
    done = subprocess.run([sys.executable, "-c", f"{code}\n{report}"], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(done.stdout.splitlines()[-1].split())


@pytest.mark.parametrize("package", PACKAGES)
def test_importing_a_package_loads_no_heavy_dependency(package):
    loaded = loaded_packages(f"import {package}")
    assert package in loaded and not loaded & HEAVY, sorted(loaded & HEAVY)


def test_help_loads_no_heavy_dependency():
    code = ("from mmgen.app.cli import main\n"
            "for argv in (['--help'], ['generate', '--help'], ['demo', '--help'], ['train', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass")
    loaded = loaded_packages(code)
    assert "mmgen" in loaded and not loaded & HEAVY, sorted(loaded & HEAVY)


def test_the_torch_only_core_needs_no_diffusers():
    """Tokens, sampling, patterns, data and metrics work on torch alone; only the model classes bring diffusers."""
    loaded = loaded_packages("import mmgen\n"
                             "mmgen.TokenLayout, mmgen.sample, mmgen.patterns.Raster, mmgen.data.ShapesDataset, mmgen.metrics.judge_shapes")
    assert "torch" in loaded and not loaded & DIFFUSERS_AND_CO, sorted(loaded & DIFFUSERS_AND_CO)
    assert "diffusers" in loaded_packages("import mmgen\nmmgen.GPT")


def lazy_names(package: str) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(module, name) pairs of a package's ``if TYPE_CHECKING:`` imports and of its ``attach(...)`` table."""
    tree = ast.parse((ROOT / package / "__init__.py").read_text())
    typed = {(node.module or name.name, name.name) for block in tree.body if isinstance(block, ast.If)
             for node in block.body if isinstance(node, ast.ImportFrom) for name in node.names}
    table = next(node.value.args[1] for node in tree.body if isinstance(node, ast.Assign)
                 and isinstance(node.value, ast.Call) and getattr(node.value.func, "id", None) == "attach")
    attached = {(key.value, name.value) for key, names in zip(table.keys, table.values) for name in names.elts}
    return typed, attached


@pytest.mark.parametrize("package", PACKAGES)
def test_lazy_names_match_the_type_checking_imports_and_all(package):
    """The three lists a lazy package keeps (for type checkers, for ``attach``, ``__all__``) name the same things."""
    typed, attached = lazy_names(package)
    submodules = {name for module, name in typed if module == name}  # from . import data, ...
    assert typed - {(name, name) for name in submodules} == attached
    assert {name for _, name in typed} == set(importlib.import_module(package).__all__)
