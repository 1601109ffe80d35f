"""Published state dicts into our modules: rename by rules, check every key, assign.

A converter (``mmgen convert --from …``) states how the original's names become ours as a list of
:class:`Rule` templates, ``"encoder.layers.{i}.conv.{rest}" -> "encoder.net.{i}.conv.{rest}"``: a
``{name}`` matches one dotted part, ``{rest}`` the remainder. The rules run both ways, so a key our model
needs but the file lacks is reported under the name the original uses. :func:`assign_weights` refuses
a file with unknown keys, missing keys or a shape that fits no parameter, listing each key concerned,
rather than loading half a model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

__all__ = ["ConvertedGenerator", "Rule", "WeightsMismatchError", "assign_weights", "check_model_type", "count_levels", "fold_weight_norm",
           "kernel1_as_linear", "modern_weight_norm_names", "rename_weights"]


class ConvertedGenerator(nn.Module):
    """A published generator's GPT, head and conditioner under one roof, so one state dict names them all."""

    def __init__(self, gpt: nn.Module, head: nn.Module, conditioner: nn.Module) -> None:
        super().__init__()
        self.gpt, self.head, self.conditioner = gpt, head, conditioner


class WeightsMismatchError(ValueError):
    """The file's keys or shapes do not fit the model built from its config; the message lists them."""


@lru_cache(maxsize=None)
def _compile(template: str) -> tuple[re.Pattern[str], list[str]]:
    parts, names = [], []
    for piece in re.split(r"(\{[a-z_]+\})", template):
        if piece.startswith("{") and piece.endswith("}"):
            name = piece[1:-1]
            names.append(name)
            parts.append(f"(?P<{name}>.+)" if name == "rest" else f"(?P<{name}>[^.]+)")
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts) + "$"), names


@dataclass(frozen=True)
class Rule:
    """``source`` template → ``target`` template; ``transform`` reshapes the tensor on the way in (e.g. adds a batch axis)."""

    source: str
    target: str
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        source_names, target_names = _compile(self.source)[1], _compile(self.target)[1]
        if sorted(source_names) != sorted(target_names):
            raise ValueError(f"rule {self.source!r} -> {self.target!r} must use the same placeholders on both sides")

    @staticmethod
    def _apply(key: str, pattern: str, template: str) -> str | None:
        match = _compile(pattern)[0].match(key)
        if match is None:
            return None
        return re.sub(r"\{([a-z_]+)\}", lambda m: match.group(m.group(1)), template)

    def forward(self, key: str) -> str | None:
        return self._apply(key, self.source, self.target)

    def backward(self, key: str) -> str | None:
        return self._apply(key, self.target, self.source)


def rename_weights(weights: Mapping[str, torch.Tensor], rules: Sequence[Rule], *,
                   ignored: Iterable[str] = ()) -> tuple[dict[str, torch.Tensor], list[str], dict[str, str]]:
    """``(renamed, unknown, origin)``: each source key through the first rule that matches; keys matching an
    ``ignored`` template are dropped (training-only buffers), the rest are ``unknown``; ``origin`` maps each
    new name to its source key and shape, for messages."""
    ignore = [_compile(t)[0] for t in ignored]
    renamed, unknown, origin = {}, [], {}
    for key, tensor in weights.items():
        for rule in rules:
            target = rule.forward(key)
            if target is not None:
                renamed[target] = rule.transform(tensor) if rule.transform else tensor
                origin[target] = f"{key}: {tuple(tensor.shape)}"
                break
        else:
            if not any(p.match(key) for p in ignore):
                unknown.append(key)
    return renamed, unknown, origin


def _source_name(key: str, rules: Sequence[Rule]) -> str:
    for rule in rules:
        source = rule.backward(key)
        if source is not None:
            return source
    return f"{key} (mmgen name; no rule gives it)"


def _shape_problem(source: str, converted: tuple[int, ...], needed: tuple[int, ...]) -> str:
    """``source`` is "key: (shape)" as the file has it; a rule's reshape shows too, so both sides read in one layout."""
    reshaped = "" if source.endswith(str(converted)) else f" (converted: {converted})"
    return f"{source}{reshaped} where the config needs {needed}"


def assign_weights(model: nn.Module, weights: Mapping[str, torch.Tensor], rules: Sequence[Rule], *, source: str,
                   ignored: Iterable[str] = (), extra: Mapping[str, torch.Tensor] | None = None) -> None:
    """Load the renamed ``weights`` (plus ``extra`` tensors in our names) into ``model``, or raise listing every mismatch.

    Every persistent entry of the model's state must be given, every given key must be one of them, and
    each shape must be the model's. Values are copied in the model's dtype.
    """
    renamed, unknown, origin = rename_weights(weights, rules, ignored=ignored)
    renamed.update(extra or {})
    own = model.state_dict()
    unknown += [_source_name(k, rules) for k in renamed if k not in own]
    missing = [_source_name(k, rules) for k in own if k not in renamed]
    shapes = [_shape_problem(origin.get(k, k), tuple(v.shape), tuple(own[k].shape))
              for k, v in renamed.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    problems = []
    if unknown:
        problems.append(f"unknown keys (not in a {source} model of this config): {sorted(unknown)}")
    if missing:
        problems.append(f"missing keys: {sorted(missing)}")
    if shapes:
        problems.append(f"shapes that match no {source} model of this config: {sorted(shapes)}")
    if problems:
        raise WeightsMismatchError(f"the {source} weights do not fit: " + "; ".join(problems))
    with torch.no_grad():
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in renamed.items()})


def count_levels(weights: Mapping[str, torch.Tensor], template: str, *, source: str) -> int:
    """How many distinct ``{k}`` the keys matching ``template`` hold (codebooks, blocks); at least one, or a clear error."""
    pattern, _ = _compile(template)
    levels = {match.group("k") for key in weights if (match := pattern.match(key))}
    if not levels:
        raise WeightsMismatchError(f"the {source} weights hold no key {template.replace('{k}', '<k>')}")
    return len(levels)


def check_model_type(config: Mapping[str, object], expected: str, *, source: str) -> None:
    """Refuse a config.json of another architecture (its ``model_type``) before any weight is read."""
    found = config.get("model_type", expected)
    if found != expected:
        raise ValueError(f"config.json describes a {found!r} model, not a {source} one (model_type {expected!r})")


# weight norm's magnitude (g) and direction (v): the old attribute names, then today's parametrisation's
_WEIGHT_NORM_OLD = {".weight_g": "g", ".weight_v": "v"}
_WEIGHT_NORM_NEW = {".parametrizations.weight.original0": "g", ".parametrizations.weight.original1": "v"}


def _weight_norm_part(key: str) -> tuple[str, str] | None:
    """``(stem, "g" | "v")`` of a weight-norm key in either naming, else None."""
    for suffix, part in {**_WEIGHT_NORM_OLD, **_WEIGHT_NORM_NEW}.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    return None


def modern_weight_norm_names(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors with weight norm's parts under today's parametrisation names (older files say weight_g / weight_v)."""
    new_suffix = {part: suffix for suffix, part in _WEIGHT_NORM_NEW.items()}
    out = {}
    for key, tensor in weights.items():
        found = _weight_norm_part(key)
        out[key if found is None else found[0] + new_suffix[found[1]]] = tensor
    return out


def fold_weight_norm(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Plain ``weight`` tensors from weight norm's magnitude and direction (either naming)."""
    out, pairs = {}, {}
    for key, tensor in weights.items():
        found = _weight_norm_part(key)
        if found is None:
            out[key] = tensor
        else:
            pairs.setdefault(found[0], {})[found[1]] = tensor
    for stem, pair in pairs.items():
        if set(pair) != {"g", "v"}:
            raise ValueError(f"weight norm of {stem} is half there: the file holds only its {'magnitude' if 'g' in pair else 'direction'}")
        v = pair["v"].float()
        norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
        out[f"{stem}.weight"] = v * (pair["g"].float() / norm)  # torch's own order of operations: the same rounding
    return out


def kernel1_as_linear(tensor: torch.Tensor) -> torch.Tensor:
    """A kernel-1 ``Conv1d`` weight ``[out, in, 1]`` as the ``Linear`` weight ``[out, in]`` it equals."""
    return tensor.squeeze(-1)
