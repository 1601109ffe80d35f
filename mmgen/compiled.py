"""``torch.compile`` for the decode step's hot functions, each graph owned by one model.

torch.compile keeps its graphs per code object, so two models (or one model before and after its
weights change) calling the same method would share them; with frozen weights (inductor folds the
parameters into the graph: oneDNN-prepacked matmuls on CPU) that would silently run the wrong weights.
:class:`CompiledStep` compiles a private copy of the method's code, once per model and per request.
"""

from __future__ import annotations

import types
from typing import Any, Callable

import torch

__all__ = ["CompiledStep"]


class CompiledStep:
    """``method`` (bound) compiled with static shapes; ``freeze``: weights folded in (they must not change after)."""

    def __init__(self, method: Callable[..., Any], *, freeze: bool) -> None:
        function = method.__func__
        private = types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__,
                                     function.__defaults__, function.__closure__)
        self.fn = torch.compile(types.MethodType(private, method.__self__), dynamic=False)
        self.freeze = freeze

    def __call__(self, *args: Any) -> Any:
        if not self.freeze:
            return self.fn(*args)
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            return self.fn(*args)
