"""Conditioners: what a sample is asked for (a class, a prompt, nothing) as prefix embeddings for the GPT.

The GPT sees ``[prefix | body]``; a conditioner turns prompts or class labels into the prefix
``[R, P, dim]``, a validity mask ``[R, P]`` (False = padding, masked out of attention) and, for AdaLN
models, one condition vector per row. Keeping this outside the GPT means the backbone knows nothing
about classes or text, and one GPT can be paired with any conditioner.

Every conditioner has a null condition (the null class, the empty prompt) for classifier-free
guidance: :meth:`Conditioner.condition` with ``guided=True`` returns R = 2B rows, the B conditional
rows first, then B null rows; :meth:`Conditioner.training_condition` replaces rows by the null
condition at random so that the model learns the unconditional branch.
"""

from __future__ import annotations

import contextlib
import json
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .hub import PretrainedModel

__all__ = [
    "Conditioning",
    "Conditioner",
    "ClassConditionerConfig",
    "ClassConditioner",
    "ByteTextConditionerConfig",
    "ByteTextConditioner",
    "TextEncoderConditionerConfig",
    "TextEncoderConditioner",
    "TEXT_PAD_ID",
    "TEXT_VOCAB_SIZE",
]

TEXT_PAD_ID = 256
TEXT_VOCAB_SIZE = 257  # 256 byte values + the pad / null-prompt id
INIT_STD = 0.02  # the GPT's default init_std: new tables start at the scale of its token embeddings

ClassLabels = int | Sequence[int] | torch.Tensor
Key = Any  # what one row is conditioned on: a class id (ClassConditioner) or a prompt (text conditioners)


@dataclass
class Conditioning:
    """The prefix of every GPT row and what each sample was asked for.

    ``prefix_RPD``: ``[R, P, dim]`` with R = B, or 2B when ``guided`` (conditional rows, then null rows).
    ``prefix_valid_RP``: bool ``[R, P]``, False where the prefix is padding (masked out of attention).
    ``adaln_RA``: ``[R, adaln_dim]`` AdaLN condition vectors, None for a conditioner without AdaLN.
    ``class_ids`` / ``prompts``: per sample (B entries) the class (None for text or the null class) and
    the prompt ("" when none).
    ``start_R1D``: ``[R, 1, dim]`` for a conditioner that conditions through the input of the first
    generated group instead of a prefix (LlamaGen's and VAR's class token), else None; programs put it
    there in place of the GPT's learned start embedding.
    """

    prefix_RPD: torch.Tensor
    prefix_valid_RP: torch.Tensor
    adaln_RA: torch.Tensor | None
    batch_size: int
    guided: bool
    class_ids: list[int | None]
    prompts: list[str]
    start_R1D: torch.Tensor | None = None

    @property
    def num_prefix(self) -> int:
        return self.prefix_RPD.shape[1]

    @classmethod
    def empty(cls, batch_size: int, dim: int, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> "Conditioning":
        """No condition at all (a plain language model): no prefix, no AdaLN vector, no guidance."""
        return cls(torch.zeros(batch_size, 0, dim, device=device, dtype=dtype), torch.zeros(batch_size, 0, dtype=torch.bool, device=device),
                   None, batch_size, False, [None] * batch_size, [""] * batch_size)


class Conditioner(PretrainedModel):
    """Base of the conditioners: argument checks, repetition, guidance rows and condition dropout.

    A subclass says how a request becomes per-sample keys (:meth:`_requests`, :meth:`_training_requests`),
    what the null key is (:attr:`_null_key`) and how keys become embeddings (:meth:`_embed`).
    """

    cfg: Any

    @property
    def dim(self) -> int:
        """Width of the prefix embeddings (the GPT's dim)."""
        return self.cfg.dim

    @property
    def adaln_dim(self) -> int:
        """Width of the AdaLN vector; 0 when the conditioner gives none."""
        return self.cfg.adaln_dim

    @property
    def max_prefix(self) -> int:
        """The number of prefix positions P of every row."""
        raise NotImplementedError

    @property
    def gives_start(self) -> bool:
        """Whether the condition is the first group's input (``Conditioning.start_R1D``) rather than the GPT's start embedding."""
        return False

    def condition(
        self,
        *,
        prompt: str | Sequence[str] | None = None,
        class_labels: ClassLabels | None = None,
        num_samples_per_prompt: int = 1,
        guided: bool = False,
        class_names: Sequence[str] | None = None,
    ) -> Conditioning:
        """The condition of ``num_samples_per_prompt`` samples per prompt or label (sample-major: each repeated in turn).

        Neither ``prompt`` nor ``class_labels`` asks for unconditional samples (the null condition).
        ``guided`` appends one null row per sample for classifier-free guidance. ``class_names``
        (one per class) lets a class conditioner take prompts.
        """
        if isinstance(num_samples_per_prompt, bool) or not isinstance(num_samples_per_prompt, int) or num_samples_per_prompt < 1:
            raise ValueError(f"num_samples_per_prompt must be a positive int, got {num_samples_per_prompt!r}")
        if not isinstance(guided, bool):
            raise TypeError(f"guided must be a bool, got {type(guided).__name__}")
        if prompt is not None and class_labels is not None:
            raise ValueError("pass prompt or class_labels, not both")
        if prompt is None and class_labels is None:
            keys, class_ids, prompts = [self._null_key], [None], [""]
        else:
            keys, class_ids, prompts = self._requests(prompt=prompt, class_labels=class_labels, class_names=class_names)
        repeat = num_samples_per_prompt
        keys, class_ids, prompts = ([item for item in items for _ in range(repeat)] for items in (keys, class_ids, prompts))
        rows = keys + [self._null_key] * len(keys) if guided else keys
        prefix, valid, adaln = self._embed(rows)
        return Conditioning(prefix, valid, adaln, len(keys), guided, class_ids, prompts, self._start(rows))

    def training_condition(
        self,
        *,
        class_labels: torch.Tensor | Sequence[int] | None = None,
        prompt: Sequence[str] | None = None,
        batch_size: int,
        cond_drop_prob: float,
        generator: torch.Generator | None = None,
    ) -> Conditioning:
        """The condition of a training batch (R = B), each row replaced by the null condition with ``cond_drop_prob``.

        The drops are drawn with ``generator`` (one uniform per row), so a seeded generator gives the same drops.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(cond_drop_prob, bool) or not isinstance(cond_drop_prob, numbers.Real):
            raise TypeError(f"cond_drop_prob must be a float, got {type(cond_drop_prob).__name__}")
        if not 0.0 <= cond_drop_prob < 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1), got {cond_drop_prob}")
        if prompt is not None and class_labels is not None:
            raise ValueError("pass prompt or class_labels, not both")
        if prompt is None and class_labels is None:
            raise ValueError(f"this {type(self).__name__} is conditional: pass class_labels or prompt to training_condition")
        keys, class_ids, prompts = self._training_requests(class_labels=class_labels, prompt=prompt, batch_size=batch_size)
        device = "cpu" if generator is None else generator.device
        drop = (torch.rand(batch_size, generator=generator, device=device) < cond_drop_prob).tolist()
        keys = [self._null_key if d else key for key, d in zip(keys, drop)]
        class_ids = [None if d else c for c, d in zip(class_ids, drop)]
        prompts = ["" if d else p for p, d in zip(prompts, drop)]
        prefix, valid, adaln = self._embed(keys)
        return Conditioning(prefix, valid, adaln, batch_size, False, class_ids, prompts, self._start(keys))

    # ---- what a subclass supplies ------------------------------------------------------------
    @property
    def _null_key(self) -> Key:
        raise NotImplementedError

    def _requests(self, *, prompt: str | Sequence[str] | None, class_labels: ClassLabels | None,
                  class_names: Sequence[str] | None) -> tuple[list[Key], list[int | None], list[str]]:
        """Keys, class ids and prompts of the samples asked for (one of prompt / class_labels is given)."""
        raise NotImplementedError

    def _training_requests(self, *, class_labels: torch.Tensor | Sequence[int] | None, prompt: Sequence[str] | None,
                           batch_size: int) -> tuple[list[Key], list[int | None], list[str]]:
        """Keys, class ids and prompts of the ``batch_size`` training rows (one of prompt / class_labels is given)."""
        raise NotImplementedError

    def _embed(self, keys: list[Key]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(prefix [R, P, dim], valid [R, P], adaln [R, adaln_dim] or None)`` of one key per row."""
        raise NotImplementedError

    def _start(self, keys: list[Key]) -> torch.Tensor | None:
        """The first group's input ``[R, 1, dim]`` of one key per row, for a conditioner that gives one."""
        return None


# ---- class conditioning --------------------------------------------------------------------------
@dataclass
class ClassConditionerConfig:
    """A :class:`ClassConditioner` of ``num_classes`` classes (plus the null class) for a GPT of width ``dim``.

    ``prefix``: give one prefix token per row; ``adaln_dim > 0``: also give an AdaLN vector per row
    (``prefix=False`` with ``adaln_dim > 0`` conditions through AdaLN alone). ``as_start``: the class
    embedding is the input of the first generated group instead of a prefix position, so there is no
    prefix and the first group's slot both holds the class and predicts the first tokens (LlamaGen's
    sequence ``[class, t_0, …]``; VAR's first scale).
    """

    dim: int
    num_classes: int
    adaln_dim: int = 0
    prefix: bool = True
    as_start: bool = False

    def __post_init__(self) -> None:
        _check_ints(self, dim=1, num_classes=1, adaln_dim=0)
        for name in ("prefix", "as_start"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {type(getattr(self, name)).__name__}")
        if self.as_start and not self.prefix:
            raise ValueError("as_start=True puts the class embedding into the first group's slot; it needs prefix=True (the embedding)")
        if not self.prefix and self.adaln_dim == 0:
            raise ValueError("prefix=False needs adaln_dim > 0: otherwise the conditioner gives no condition at all")


class ClassConditioner(Conditioner):
    """Class labels as one learned prefix token (and/or an AdaLN vector); id ``num_classes`` is the null class.

    Prompts are accepted when ``class_names`` are given: a prompt names its class (case and spacing ignored).
    """

    config_class = ClassConditionerConfig

    def __init__(self, config: ClassConditionerConfig | dict) -> None:
        super().__init__()
        cfg = self._register_typed_config(config)
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.num_classes + 1, cfg.dim) if cfg.prefix else None
        self.adaln_embedding = nn.Embedding(cfg.num_classes + 1, cfg.adaln_dim) if cfg.adaln_dim else None
        for table in (self.embedding, self.adaln_embedding):
            if table is not None:
                nn.init.normal_(table.weight, std=INIT_STD)

    @property
    def null_class_id(self) -> int:
        """Class id of the unconditional branch."""
        return self.cfg.num_classes

    @property
    def max_prefix(self) -> int:
        return 1 if self.cfg.prefix and not self.cfg.as_start else 0

    @property
    def gives_start(self) -> bool:
        return self.cfg.as_start

    @property
    def _null_key(self) -> int:
        return self.null_class_id

    def _requests(self, *, prompt: str | Sequence[str] | None, class_labels: ClassLabels | None,
                  class_names: Sequence[str] | None) -> tuple[list[int], list[int | None], list[str]]:
        if prompt is not None:
            prompts = _check_prompts(prompt)
            labels = [self._class_of_prompt(p, class_names) for p in prompts]
            return labels, list(labels), prompts
        labels = self._check_class_labels(class_labels, allow_null=False)
        return labels, list(labels), [""] * len(labels)

    def _training_requests(self, *, class_labels: torch.Tensor | Sequence[int] | None, prompt: Sequence[str] | None,
                           batch_size: int) -> tuple[list[int], list[int | None], list[str]]:
        if prompt is not None:
            raise ValueError("prompt given, but a ClassConditioner trains on class_labels: pass the class ids instead")
        labels = self._check_class_labels(class_labels, allow_null=True)
        if len(labels) != batch_size:
            raise ValueError(f"class_labels holds {len(labels)} labels, batch_size is {batch_size}")
        class_ids = [None if label == self.null_class_id else label for label in labels]
        return labels, class_ids, [""] * batch_size

    def _embed(self, keys: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        ids_R = torch.tensor(keys, dtype=torch.long, device=self.device)
        R = len(keys)
        if self.max_prefix == 0:
            prefix_RPD = torch.zeros(R, 0, self.cfg.dim, device=self.device, dtype=self.dtype)
        else:
            prefix_RPD = self.embedding(ids_R).unsqueeze(1)
        valid_RP = torch.ones(R, self.max_prefix, dtype=torch.bool, device=self.device)
        adaln_RA = None if self.adaln_embedding is None else self.adaln_embedding(ids_R)
        return prefix_RPD, valid_RP, adaln_RA

    def _start(self, keys: list[int]) -> torch.Tensor | None:
        if not self.cfg.as_start:
            return None
        return self.embedding(torch.tensor(keys, dtype=torch.long, device=self.device)).unsqueeze(1)

    def _class_of_prompt(self, prompt: str, class_names: Sequence[str] | None) -> int:
        if class_names is None:
            raise ValueError("prompt given, but a ClassConditioner needs class_names to match it to a class")
        if isinstance(class_names, str) or not all(isinstance(n, str) and n.strip() for n in class_names):
            raise ValueError("class_names must be a list of non-empty strings")
        if len(class_names) != self.cfg.num_classes:
            raise ValueError(f"class_names has {len(class_names)} names, the conditioner has num_classes={self.cfg.num_classes}")
        lookup = {_normalise_name(n): i for i, n in enumerate(class_names)}
        key = _normalise_name(prompt)
        if key not in lookup:
            raise ValueError(f"prompt {prompt!r} is not one of the class names this model knows, e.g. {list(class_names)[:3]}")
        return lookup[key]

    def _check_class_labels(self, class_labels: ClassLabels | None, *, allow_null: bool) -> list[int]:
        """Labels as ints in [0, num_classes), or [0, num_classes] where the null class is allowed (training)."""
        if isinstance(class_labels, torch.Tensor):
            if class_labels.is_floating_point() or class_labels.is_complex() or class_labels.dim() > 1:
                raise TypeError("class_labels must be an int, a list of ints or a 1-D integer tensor")
            labels = class_labels.flatten().tolist()
        elif isinstance(class_labels, numbers.Integral):
            labels = [class_labels]
        elif isinstance(class_labels, (Sequence, np.ndarray)) and not isinstance(class_labels, str):
            labels = list(class_labels)
        else:
            raise TypeError("class_labels must be an int, a list of ints or a 1-D integer tensor, "
                            f"got {type(class_labels).__name__}")
        if not labels:
            raise ValueError("class_labels must not be empty")
        n = self.cfg.num_classes
        for label in labels:
            if isinstance(label, (bool, np.bool_)) or not isinstance(label, numbers.Integral):
                raise TypeError(f"class_labels must hold ints, got {label!r}")
            if allow_null and not 0 <= label <= n:
                raise ValueError(f"unknown class id {label}: class_labels must lie in [0, {n}] ({n} is the null class)")
            if not allow_null and not 0 <= label < n:
                raise ValueError(f"unknown class id {label}: class_labels must lie in [0, {n})")
        return [int(label) for label in labels]


# ---- text conditioning ---------------------------------------------------------------------------
class _TextConditioner(Conditioner):
    """What the text conditioners share: prompts as keys, "" as the null prompt, AdaLN from the mean prefix.

    A subclass builds ``self.adaln_proj`` / ``self.adaln_null`` with :meth:`_build_adaln` and
    implements :meth:`_prefix`.
    """

    @property
    def max_prefix(self) -> int:
        return self.cfg.max_len

    @property
    def _null_key(self) -> str:
        return ""

    def _build_adaln(self) -> None:
        adaln = self.cfg.adaln_dim
        self.adaln_proj = nn.Linear(self.cfg.dim, adaln) if adaln else None
        self.adaln_null = nn.Parameter(torch.randn(adaln) * INIT_STD) if adaln else None

    def _requests(self, *, prompt: str | Sequence[str] | None, class_labels: ClassLabels | None,
                  class_names: Sequence[str] | None) -> tuple[list[str], list[int | None], list[str]]:
        if class_labels is not None:
            raise ValueError(f"class_labels given, but a {type(self).__name__} takes prompts (no class conditioning)")
        prompts = _check_prompts(prompt)
        return prompts, [None] * len(prompts), prompts

    def _training_requests(self, *, class_labels: torch.Tensor | Sequence[int] | None, prompt: Sequence[str] | None,
                           batch_size: int) -> tuple[list[str], list[int | None], list[str]]:
        if class_labels is not None:
            raise ValueError(f"class_labels given, but a {type(self).__name__} trains on prompts (no class conditioning)")
        if not isinstance(prompt, (list, tuple)) or not all(isinstance(p, str) for p in prompt):
            raise TypeError("prompt must be a list of str (one per training image; \"\" is the null prompt)")
        prompts = list(prompt)
        if len(prompts) != batch_size:
            raise ValueError(f"prompt holds {len(prompts)} prompts, batch_size is {batch_size}")
        return prompts, [None] * batch_size, prompts

    def _embed(self, keys: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        prefix_RPD, valid_RP = self._prefix(keys)
        if self.adaln_proj is None:
            return prefix_RPD, valid_RP, None
        weight_RP1 = valid_RP.unsqueeze(-1).to(prefix_RPD.dtype)
        mean_RD = (prefix_RPD * weight_RP1).sum(1) / weight_RP1.sum(1).clamp_min(1)
        adaln_RA = self.adaln_proj(mean_RD)
        null_RA = self.adaln_null.to(adaln_RA.dtype).expand_as(adaln_RA)
        return prefix_RPD, valid_RP, torch.where(valid_RP.any(1, keepdim=True), adaln_RA, null_RA)

    def _prefix(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prefix [R, max_len, dim], valid [R, max_len])`` of one prompt per row ("" = all invalid)."""
        raise NotImplementedError


@dataclass
class ByteTextConditionerConfig:
    """A :class:`ByteTextConditioner` for prompts of up to ``max_len`` UTF-8 bytes, for a GPT of width ``dim``."""

    dim: int
    max_len: int
    adaln_dim: int = 0

    def __post_init__(self) -> None:
        _check_ints(self, dim=1, max_len=1, adaln_dim=0)


class ByteTextConditioner(_TextConditioner):
    """Prompts as their UTF-8 bytes, one learned embedding per byte, right-padded to ``max_len``.

    The null prompt is all padding. With ``adaln_dim > 0`` the AdaLN vector is a linear map of the mean
    embedding of the prompt's bytes (a learned vector for the null prompt).
    """

    config_class = ByteTextConditionerConfig

    def __init__(self, config: ByteTextConditionerConfig | dict) -> None:
        super().__init__()
        cfg = self._register_typed_config(config)
        self.cfg = cfg
        self.embedding = nn.Embedding(TEXT_VOCAB_SIZE, cfg.dim)
        nn.init.normal_(self.embedding.weight, std=INIT_STD)
        self._build_adaln()

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts → byte ids ``[R, max_len]``, right-padded with ``TEXT_PAD_ID`` (an empty prompt is the null prompt)."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts must be a list of str")
        ids_RL = torch.full((len(prompts), self.cfg.max_len), TEXT_PAD_ID, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            data = prompt.encode("utf-8")
            if len(data) > self.cfg.max_len:
                raise ValueError(f"prompt {prompt!r} is {len(data)} bytes; "
                                 f"the conditioner takes at most max_len={self.cfg.max_len}")
            ids_RL[row, : len(data)] = torch.tensor(list(data), dtype=torch.long)
        return ids_RL.to(self.device)

    def _prefix(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids_RL = self.encode(prompts)
        return self.embedding(ids_RL), ids_RL != TEXT_PAD_ID


@dataclass
class TextEncoderConditionerConfig:
    """A :class:`TextEncoderConditioner`: a ``transformers`` encoder and its fast tokenizer, projected to ``dim``.

    ``encoder_config`` (the encoder's ``config.to_dict()``) and ``tokenizer_json`` (the fast tokenizer's
    JSON, with its padding) rebuild both without the folder they came from; build this config with
    :meth:`TextEncoderConditioner.from_encoder`. ``freeze_encoder`` keeps the encoder's weights out of training.
    """

    dim: int
    max_len: int
    encoder_config: dict
    tokenizer_json: str
    adaln_dim: int = 0
    freeze_encoder: bool = True

    def __post_init__(self) -> None:
        _check_ints(self, dim=1, max_len=1, adaln_dim=0)
        if not isinstance(self.encoder_config, dict) or not isinstance(self.encoder_config.get("model_type"), str):
            raise ValueError("encoder_config must be a transformers config dict with a 'model_type' (config.to_dict())")
        if not isinstance(self.tokenizer_json, str) or not self.tokenizer_json:
            raise ValueError("tokenizer_json must be the fast tokenizer's JSON string (backend_tokenizer.to_str())")
        if not isinstance(self.freeze_encoder, bool):
            raise TypeError(f"freeze_encoder must be a bool, got {type(self.freeze_encoder).__name__}")


class TextEncoderConditioner(_TextConditioner):
    """Prompts through a pretrained text encoder (BERT, T5's encoder, ...), its hidden states projected to ``dim``.

    Load one with :meth:`from_encoder`; ``save_pretrained`` / ``from_pretrained`` then keep encoder,
    tokenizer and projection in this conditioner's own folder. Valid positions are the tokenizer's
    attention mask (padding positions hold zeros); the null prompt is all invalid. ``transformers`` is
    imported only when a conditioner is built, so ``import mmgen`` stays fast.
    """

    config_class = TextEncoderConditionerConfig

    def __init__(self, config: TextEncoderConditionerConfig | dict) -> None:
        super().__init__()
        cfg = self._register_typed_config(config)
        self.cfg = cfg
        self.encoder = _build_encoder(cfg.encoder_config)
        self.tokenizer = _build_tokenizer(cfg.tokenizer_json)
        positions = getattr(self.encoder.config, "max_position_embeddings", None)
        if positions is not None and cfg.max_len > positions:
            raise ValueError(f"max_len={cfg.max_len} exceeds the encoder's max_position_embeddings={positions}")
        self.projection = nn.Linear(self.encoder.config.hidden_size, cfg.dim)
        if cfg.freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()
        self._build_adaln()

    @classmethod
    def from_encoder(cls, name_or_path: str | os.PathLike, *, dim: int, max_len: int, adaln_dim: int = 0,
                     freeze_encoder: bool = True, **kwargs: Any) -> "TextEncoderConditioner":
        """A conditioner around the encoder and fast tokenizer in ``name_or_path`` (a local folder or a hub id).

        ``kwargs`` (``local_files_only``, ``revision``, ``cache_dir``, ``token``, ...) go to both
        ``from_pretrained`` calls of ``transformers``; what cannot be loaded (no such folder, an unknown repo,
        offline without a cached copy) is a ``ValueError``. The projection (and AdaLN map) start fresh.
        """
        from tokenizers import Tokenizer
        from transformers import AutoModel, AutoTokenizer

        def load(auto: Any) -> Any:
            try:
                return auto.from_pretrained(name_or_path, **kwargs)
            except OSError as err:  # no such folder, an unknown repo, offline without a cached copy
                raise ValueError(f"name_or_path {str(name_or_path)!r} is no text encoder folder or hub repo that can be "
                                 f"loaded ({type(err).__name__}: {err})") from err

        tokenizer = load(AutoTokenizer)
        if not hasattr(tokenizer, "backend_tokenizer"):
            raise TypeError(f"the tokenizer of {str(name_or_path)!r} is not a fast tokenizer; a TextEncoderConditioner needs one")
        if tokenizer.pad_token is None:
            raise ValueError(f"the tokenizer of {str(name_or_path)!r} has no pad token; "
                             "a TextEncoderConditioner pads prompts to max_len")
        backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        backend.no_truncation()
        backend.enable_padding(pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token)
        encoder = _encoder_part(load(AutoModel))
        config = TextEncoderConditionerConfig(
            dim=dim, max_len=max_len, adaln_dim=adaln_dim, freeze_encoder=freeze_encoder,
            encoder_config=json.loads(encoder.config.to_json_string(use_diff=False)),
            tokenizer_json=backend.to_str(),
        )
        conditioner = cls(config)
        conditioner.encoder.load_state_dict(encoder.state_dict())
        return conditioner

    def train(self, mode: bool = True) -> "TextEncoderConditioner":
        """A frozen encoder stays in eval mode (no dropout) while the projection trains."""
        super().train(mode)
        if self.cfg.freeze_encoder:
            self.encoder.eval()
        return self

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts → token ids and attention mask, both ``[R, max_len]`` (right-padded with the pad token)."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts must be a list of str")
        batch = self.tokenizer(list(prompts), padding="max_length", max_length=self.cfg.max_len, truncation=False)
        for prompt, ids in zip(prompts, batch["input_ids"]):
            if len(ids) > self.cfg.max_len:
                raise ValueError(f"prompt {prompt!r} is {len(ids)} tokens; "
                                 f"the conditioner takes at most max_len={self.cfg.max_len}")
        ids_RL = torch.tensor(batch["input_ids"], dtype=torch.long, device=self.device)
        mask_RL = torch.tensor(batch["attention_mask"], dtype=torch.bool, device=self.device)
        return ids_RL, mask_RL

    def _prefix(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        R, L = len(prompts), self.cfg.max_len
        dtype = self.projection.weight.dtype
        prefix_RPD = torch.zeros(R, L, self.cfg.dim, device=self.device, dtype=dtype)
        valid_RP = torch.zeros(R, L, dtype=torch.bool, device=self.device)
        rows = [row for row, prompt in enumerate(prompts) if prompt]
        if not rows:
            return prefix_RPD, valid_RP
        ids_NL, mask_NL = self.encode([prompts[row] for row in rows])
        frozen = torch.no_grad() if self.cfg.freeze_encoder else contextlib.nullcontext()
        with frozen:
            hidden_NLH = self.encoder(input_ids=ids_NL, attention_mask=mask_NL.long()).last_hidden_state
        embedded_NLD = self.projection(hidden_NLH.to(dtype)) * mask_NL.unsqueeze(-1).to(dtype)
        index = (torch.tensor(rows, device=self.device),)
        return prefix_RPD.index_put(index, embedded_NLD), valid_RP.index_put(index, mask_NL)


def _build_encoder(encoder_config: dict) -> nn.Module:
    """A randomly initialised encoder of ``encoder_config`` (weights come from the checkpoint)."""
    from transformers import AutoConfig, AutoModel

    values = dict(encoder_config)
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    return _encoder_part(AutoModel.from_config(config))


def _encoder_part(model: nn.Module) -> nn.Module:
    """The encoder of an encoder-decoder model (T5), the model itself otherwise (BERT)."""
    return model.get_encoder() if getattr(model.config, "is_encoder_decoder", False) else model


def _build_tokenizer(tokenizer_json: str) -> Any:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(tokenizer_json)
    if backend.padding is None:
        raise ValueError("tokenizer_json has no padding: build the config with TextEncoderConditioner.from_encoder")
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=backend.padding["pad_token"])


# ---- checks --------------------------------------------------------------------------------------
def _check_prompts(prompt: str | Sequence[str]) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise TypeError(f"prompt must be a non-empty str or a non-empty list of str, got {type(prompt).__name__}")
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"prompt must be a str or a list of str, got an item of type {type(p).__name__}")
        if not p.strip():
            raise ValueError("prompt must not be empty; for unconditional samples pass neither prompt nor class_labels")
    return list(prompts)


def _normalise_name(name: str) -> str:
    return " ".join(name.lower().split())


def _check_ints(config: Any, **minimums: int) -> None:
    """Each named field of ``config`` is an int of at least its minimum."""
    for name, minimum in minimums.items():
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
