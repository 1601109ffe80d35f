"""Package attributes that import their module on first use (PEP 562), for the packages' public names.

The classes the packages re-export live in modules that need torch, and most of them diffusers, whose import
pulls in transformers, accelerate and triton: seconds of CPU. Imported eagerly, ``import mmgen``, ``import
pipelines`` and ``mmgen --help`` paid all of it; through :func:`attach` a name costs its module's imports
when it is first used, and ``from mmgen import GPT`` works as before.
"""

from __future__ import annotations

import importlib.util
import pkgutil
import sys
from collections.abc import Callable, Iterable, Mapping
from importlib import import_module
from typing import Any

__all__ = ["attach"]


def attach(
    package: str, exports: Mapping[str, Iterable[str]], *, reexport: Iterable[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``; ``exports`` maps each submodule to the names it gives the package.

    A submodule is an attribute too (``mmgen.gpt``), as it was when the package imported it eagerly; the public
    names (``__all__``) of the ``reexport`` packages come last and stay looked up there. A name of ``package``'s
    own is stored on it once resolved.
    """
    where = {name: module for module, names in exports.items() for name in names}
    reexport = tuple(reexport)

    def __getattr__(name: str) -> Any:
        if name in where:
            value = getattr(import_module(f"{package}.{where[name]}"), name)
            setattr(sys.modules[package], name, value)
            return value
        if not name.startswith("__"):  # dunder probes (__wrapped__, __file__ ...) never mean a public name
            if importlib.util.find_spec(f"{package}.{name}") is not None:
                return import_module(f"{package}.{name}")  # the import binds it on the package
            for other in reexport:
                module = import_module(other)
                if name in getattr(module, "__all__", ()):
                    return getattr(module, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        module = sys.modules[package]
        names = {*vars(module), *where, *(info.name for info in pkgutil.iter_modules(module.__path__))}
        names.update(name for other in reexport for name in getattr(import_module(other), "__all__", ()))
        return sorted(names)

    return __getattr__, __dir__
