"""The layers of the code base, read from the source (AST only, nothing is imported).

- ``pipelines/`` and the trainer (``mmgen/app/training/``) work with any tokenizer through
  :mod:`mmgen.protocol`: they import no tokenizer module or class (``from tokenizers_visual... import X``,
  ``import tokenizers_visual.x``), name no class of the tokenizer packages (not even as
  ``package.Class`` or a string) and never ask ``isinstance(x, SomeTokenizer)``. The trainer's builder
  finds a tokenizer class by the name a config gives, through ``importlib.import_module(package)``
  of a tokenizer *package*: that names no class and is allowed.
- ``mmgen``'s library (everything but ``mmgen/app/``) imports nothing from ``pipelines`` or the
  tokenizer packages, at any nesting level.
- The modules of ``mmgen`` import each other without cycles: the imports that run when a module is
  imported (module level, class bodies, top-level ``if`` / ``try``) form no cycle. Imports deferred
  into a function do not run at import time, but they are dependencies too: the ones that close a
  cycle are listed in :data:`DEFERRED_CYCLES` with their reason, and a new one fails.
  ``if TYPE_CHECKING:`` imports never run and do not count.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_PACKAGES = ("tokenizers_visual", "tokenizers_audio")
UPPER_PACKAGES = ("pipelines", *TOKENIZER_PACKAGES)
IMPORT_CALLS = ("import_module", "__import__")  # importlib.import_module(name), __import__(name)


@dataclass(frozen=True)
class Import:
    """One import: the absolute module it names, the names taken from it, where, and whether it runs."""

    module: str
    names: tuple[str, ...]
    line: int
    type_checking: bool
    deferred: bool = False  # inside a function body: runs when called, not at import
    dynamic: bool = False


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def python_files(folder: str) -> list[Path]:
    files = sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)
    assert files, f"no Python files under {folder}/"
    return files


@functools.cache
def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(path: Path, *, name: str | None = None) -> list[Import]:
    """Every import in ``path`` (module ``name``), relative ones resolved, at any depth (functions, classes, branches)."""
    tree = parse(path)
    name = module_name(path) if name is None else name
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, guarded: bool, deferred: bool) -> None:
        if isinstance(node, ast.If) and is_type_checking(node.test):
            for child in node.body:
                visit(child, True, deferred)
            for child in node.orelse:
                visit(child, guarded, deferred)
            return
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, (), node.lineno, guarded, deferred) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.append(Import(module, tuple(alias.name for alias in node.names), node.lineno, guarded, deferred))
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0] if node.args else None
            if called in IMPORT_CALLS and isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.append(Import(first.value, (), node.lineno, guarded, deferred, dynamic=True))
        inside = deferred or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, guarded, inside)

    visit(tree, False, False)
    return found


def names_package(module: str, packages: tuple[str, ...]) -> bool:
    return module.split(".")[0] in packages


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line}"


# ---- (1) pipelines and the trainer know tokenizers only through the protocol ----------------------
GENERIC_LAYERS = ["pipelines", "mmgen/app/training"]


def concrete_tokenizer_checks(path: Path) -> list[str]:
    """``isinstance`` / ``issubclass`` against a class named like a concrete tokenizer or codec."""
    tree = parse(path)
    bad = []

    def class_names(node: ast.expr) -> list[str]:
        if isinstance(node, ast.Tuple):
            return [n for element in node.elts for n in class_names(element)]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return class_names(node.left) + class_names(node.right)
        if isinstance(node, ast.Attribute):
            return [node.attr]
        if isinstance(node, ast.Name):
            return [node.id]
        return []

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("isinstance", "issubclass") and len(node.args) == 2:
            for name in class_names(node.args[1]):
                concrete = any(name.endswith(suffix) and name != suffix for suffix in ("Tokenizer", "Codec"))
                if concrete:
                    bad.append(f"{where(path, node.lineno)}: {node.func.id}(..., {name})")
    return bad


def tokenizer_class_names() -> set[str]:
    """The public classes the tokenizer packages define."""
    names = {node.name for package in TOKENIZER_PACKAGES for path in python_files(package)
             for node in ast.walk(parse(path)) if isinstance(node, ast.ClassDef)}
    return {n for n in names if not n.startswith("_")}


def tokenizer_imports(path: Path, *, name: str | None = None) -> list[str]:
    """Imports of a tokenizer module or class; a bare tokenizer package (searched by class name) is allowed."""
    bad = []
    for imp in imports(path, name=name):
        if not names_package(imp.module, TOKENIZER_PACKAGES) or (imp.module in TOKENIZER_PACKAGES and not imp.names):
            continue
        what = f"import_module({imp.module!r})" if imp.dynamic else (
            f"from {imp.module} import {', '.join(imp.names)}" if imp.names else f"import {imp.module}")
        bad.append(f"{where(path, imp.line)}: {what}")
    return bad


def tokenizer_class_mentions(path: Path, classes: set[str]) -> list[str]:
    """Names, attributes and strings equal to a tokenizer package's class (``tv.VQImageTokenizer``, ``"KLConfig"``)."""
    bad = []
    for node in ast.walk(parse(path)):
        named = (node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute)
                 else node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None)
        if named in classes:
            bad.append(f"{where(path, node.lineno)}: {named}")
    return bad


@pytest.mark.parametrize("layer", GENERIC_LAYERS)
def test_generic_layers_import_no_concrete_tokenizer(layer):
    bad = [line for path in python_files(layer) for line in tokenizer_imports(path)]
    assert not bad, f"{layer}/ must reach tokenizers only through mmgen.protocol, but it imports:\n" + "\n".join(bad)


@pytest.mark.parametrize("layer", GENERIC_LAYERS)
def test_generic_layers_name_no_tokenizer_class(layer):
    classes = tokenizer_class_names()
    assert {"VQImageTokenizer", "MultiScaleVQTokenizer", "KLConfig"} <= classes
    bad = [line for path in python_files(layer) for line in tokenizer_class_mentions(path, classes)]
    assert not bad, f"{layer}/ must not name a tokenizer class:\n" + "\n".join(bad)


@pytest.mark.parametrize("layer", GENERIC_LAYERS)
def test_generic_layers_never_check_for_a_concrete_tokenizer(layer):
    bad = [line for path in python_files(layer) for line in concrete_tokenizer_checks(path)]
    assert not bad, f"{layer}/ must not branch on a tokenizer's class:\n" + "\n".join(bad)


CHECKER_SAMPLE = '''
import importlib
from typing import TYPE_CHECKING
from tokenizers_visual.vq import VQImageTokenizer
import tokenizers_audio.codec
import tokenizers_visual
from . import sibling
from ..up import thing
if TYPE_CHECKING:
    from .gpt import GPT


class Holder:
    from .held import Held


def f(x):
    from pipelines import NextTokenPipeline
    importlib.import_module("tokenizers_visual.kl")
    importlib.import_module("tokenizers_audio")
    return isinstance(x, (VQImageTokenizer, Tokenizer)) or issubclass(x, tv.SNACCodec | int) or "KLConfig"
'''


def test_checkers_catch_what_the_rules_forbid(tmp_path):
    path = tmp_path / "sample.py"
    path.write_text(CHECKER_SAMPLE)
    found = {imp.module: imp for imp in imports(path, name="pkg.sub.sample")}
    assert found["pkg.sub"].names == ("sibling",) and found["pkg.up"].names == ("thing",)
    assert found["pkg.sub.gpt"].type_checking and not found["pkg.sub"].type_checking
    assert not found["pkg.sub.held"].deferred, "a class body runs at import time"
    assert found["pipelines"].deferred and found["tokenizers_visual.kl"].deferred and found["tokenizers_visual.kl"].dynamic
    assert not found["tokenizers_visual.vq"].deferred
    bad = tokenizer_imports(path, name="pkg.sub.sample")
    assert [line.split(": ", 1)[1] for line in bad] == [
        "from tokenizers_visual.vq import VQImageTokenizer", "import tokenizers_audio.codec", "import_module('tokenizers_visual.kl')"]
    checks = [line.split(": ", 1)[1] for line in concrete_tokenizer_checks(path)]
    assert checks == ["isinstance(..., VQImageTokenizer)", "issubclass(..., SNACCodec)"]
    mentions = [line.split(": ", 1)[1] for line in tokenizer_class_mentions(path, {"VQImageTokenizer", "KLConfig"})]
    assert mentions.count("KLConfig") == 1 and "VQImageTokenizer" in mentions


def test_the_trainer_finds_tokenizer_classes_by_package_and_name():
    """The one sanctioned way in: ``import_module`` of a tokenizer package named in a constant, no class named."""
    builders = ROOT / "mmgen/app/training/builders.py"
    tree = parse(builders)
    constants = {target.id: node.value for node in tree.body if isinstance(node, ast.Assign)
                 for target in node.targets if isinstance(target, ast.Name)}
    packages = constants.get("TOKENIZER_PACKAGES")
    assert isinstance(packages, ast.Tuple)
    assert sorted(element.value for element in packages.elts) == sorted(TOKENIZER_PACKAGES)
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "import_module"]
    assert calls and all(isinstance(call.args[0], ast.Name) for call in calls)
    assert not concrete_tokenizer_checks(builders)


# ---- (2) the library does not reach up -------------------------------------------------------------
def library_files() -> list[Path]:
    return [p for p in python_files("mmgen") if "app" not in p.relative_to(ROOT / "mmgen").parts[:1]]


def test_library_imports_nothing_from_the_packages_built_on_it():
    files = library_files()
    assert ROOT / "mmgen/generation.py" in files and not any(p.is_relative_to(ROOT / "mmgen/app") for p in files)
    bad = [f"{where(path, imp.line)}: {imp.module}" for path in files for imp in imports(path)
           if names_package(imp.module, UPPER_PACKAGES)]
    assert not bad, "mmgen's library (outside mmgen/app/) must not import pipelines or tokenizers:\n" + "\n".join(bad)


# ---- (3) no import cycles inside mmgen -------------------------------------------------------------
# Deferred (function-level) imports that close a cycle with the import-time graph, and why each is there.
DEFERRED_CYCLES = {
    ("mmgen.heads", "mmgen.flow_head"): "heads.__getattr__ re-exports FlowHead, whose module imports heads.Head",
}


@functools.cache
def mmgen_graph(*, deferred: bool = False) -> dict[str, dict[str, str]]:
    """module -> {imported mmgen module: where} over the imports that run at import time (``deferred``: only
    the function-level ones). ``from pkg import sub`` is an edge to ``pkg.sub``; other names to ``pkg``."""
    paths = {module_name(p): p for p in python_files("mmgen")}
    graph: dict[str, dict[str, str]] = {name: {} for name in paths}
    for name, path in paths.items():
        for imp in imports(path):
            if imp.type_checking or imp.deferred != deferred or not names_package(imp.module, ("mmgen",)):
                continue
            targets = [f"{imp.module}.{n}" for n in imp.names if f"{imp.module}.{n}" in paths]
            if len(targets) < len(imp.names) or not imp.names:
                targets.append(imp.module)  # names that are not submodules come from the module itself
            for target in targets:
                if target in paths and target != name:
                    graph[name].setdefault(target, where(path, imp.line))
    return graph


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    """A cycle as its path ``[a, b, ..., a]``, or None (iterative DFS, white/grey/black)."""
    state = dict.fromkeys(graph, 0)
    for root in sorted(graph):
        if state[root]:
            continue
        stack = [(root, iter(sorted(graph[root])))]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
            elif state[child] == 1:
                path = [n for n, _ in stack]
                return path[path.index(child):] + [child]
            elif state[child] == 0:
                state[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
    return None


def path_between(graph: dict[str, dict[str, str]], start: str, goal: str) -> list[str] | None:
    """A path ``[start, ..., goal]`` along the graph's edges, or None."""
    previous, frontier = {start: None}, [start]
    while frontier:
        node = frontier.pop(0)
        if node == goal:
            path = [node]
            while previous[path[-1]] is not None:
                path.append(previous[path[-1]])
            return path[::-1]
        for child in sorted(graph[node]):
            if child not in previous:
                previous[child] = node
                frontier.append(child)
    return None


def describe(graph: dict[str, dict[str, str]], path: list[str]) -> list[str]:
    return [f"{a} -> {b} ({graph[a][b]})" for a, b in zip(path, path[1:])]


def test_cycle_finder_reports_the_path():
    assert find_cycle({"a": {"b": ""}, "b": {"c": ""}, "c": {"a": ""}, "d": {}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": ""}, "b": {}, "c": {"a": "", "b": ""}}) is None
    assert path_between({"a": {"b": ""}, "b": {"c": ""}, "c": {}}, "a", "c") == ["a", "b", "c"]
    assert path_between({"a": {"b": ""}, "b": {}, "c": {}}, "a", "c") is None


def test_the_graph_resolves_relative_and_deferred_imports():
    assert module_name(ROOT / "mmgen/sampling/__init__.py") == "mmgen.sampling"
    graph, deferred = mmgen_graph(), mmgen_graph(deferred=True)
    assert "mmgen.tokens" in graph["mmgen.gpt"]  # from .tokens import ...
    assert "mmgen.sampling" in graph["mmgen.heads"]  # from .sampling import ...
    assert "mmgen.sampling.config" in graph["mmgen.sampling"]  # from .config import ... (inside a package)
    assert "mmgen.data.images" in graph["mmgen.data"]  # from . import audio, images
    assert "mmgen.gpt" not in graph["mmgen.heads"]  # under `if TYPE_CHECKING:`
    assert "mmgen.flow_head" in deferred["mmgen.heads"] and "mmgen.flow_head" not in graph["mmgen.heads"]


def test_mmgen_modules_import_each_other_without_cycles():
    graph = mmgen_graph()
    cycle = find_cycle(graph)
    if cycle is not None:
        pytest.fail("import cycle among mmgen's modules:\n" + "\n".join(describe(graph, cycle)))


def test_deferred_imports_close_no_new_cycle():
    graph, deferred = mmgen_graph(), mmgen_graph(deferred=True)
    closing = {}
    for a, targets in deferred.items():
        for b, place in targets.items():
            back = path_between(graph, b, a)
            if back is not None:
                closing[(a, b)] = [f"{a} -> {b} ({place}, in a function)", *describe(graph, back)]
    new = {edge: steps for edge, steps in closing.items() if edge not in DEFERRED_CYCLES}
    assert not new, "a function-level import closes an import cycle:\n" + "\n\n".join("\n".join(s) for s in new.values())
    gone = sorted(set(DEFERRED_CYCLES) - set(closing))
    assert not gone, f"these deferred cycles are gone; remove them from DEFERRED_CYCLES: {gone}"
