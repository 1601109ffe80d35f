"""What the image pipelines share: conditioning, per-sample seeds, the group-by-group loop, outputs, saving.

Every paradigm is one loop over the groups of a token layout (see :mod:`mmgen.tokens`). The GPT sees
``[condition prefix | body]``: the prefix is a class token (id ``num_classes`` = null class) or
``text_max_len`` byte tokens (all padding = null prompt); the body has one slot per token of the
layout, and the slots of group k hold inputs derived from groups < k (group 0 holds the GPT's learned
start embedding). The outputs at group k's slots predict group k. So generation is one GPT forward per
group (prefill of prefix + group 0, then one cached step per later group) and training is one forward
over the whole sequence. A paradigm supplies four hooks: the body layout, the inputs of a group, how a
group is drawn from the GPT's hidden states, and how drawn tokens become images.

Classifier-free guidance doubles the batch (conditional rows, then null-condition rows) and mixes the two
predictions per group with a scale from :class:`mmgen.sampling.GuidanceSchedule`.
"""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from mmgen.gpt import GPT, TEXT_PAD_ID
from mmgen.files import write_text_atomically
from mmgen.hub import resolve_pipeline_path
from mmgen.sampling import GuidanceSchedule, sample
from mmgen.tokens import TokenLayout

__all__ = ["ARImagePipeline", "ARImagePipelineOutput", "Condition", "SHIM_MODULE", "OUTPUT_TYPES"]

OUTPUT_TYPES = ("pil", "np", "pt", "tokens")
SHIM_MODULE = "mmgen_pipeline"
SHIM_SOURCE = (
    '"""Written by mmgen: lets diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)\n'
    'find the pipeline class. It only imports mmgen\'s installed pipelines."""\n'
    "from pipelines import *  # noqa: F401,F403\n"
)
SEED_HIGH = 2**62  # per-sample seeds are drawn in [0, SEED_HIGH); token seeds add the slot index to them


@dataclass
class ARImagePipelineOutput(BaseOutput):
    """``images``: PIL list, ``[B, H, W, 3]`` array or ``[B, 3, H, W]`` tensor in [0, 1] (None for "tokens").

    ``tokens``: what the tokenizer decodes (ids or latents), one row per image.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor | None
    tokens: Any


@dataclass
class Condition:
    """The prefix of every GPT row and what each sample was asked for.

    ``prefix_RPD``: ``[R, P, dim]`` with R = B, or 2B under guidance (conditional rows first).
    ``class_ids``: the class of each of the B samples (None for text or unconditional ones).
    ``prompts``: the prompt of each sample ("" when none).
    """

    prefix_RPD: torch.Tensor
    batch_size: int
    guided: bool
    class_ids: list[int | None] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)

    @property
    def num_prefix(self) -> int:
        return self.prefix_RPD.shape[1]


class ARImagePipeline(DiffusionPipeline):
    """Base of :class:`NextTokenPipeline`, :class:`NextScalePipeline` and :class:`NextXPipeline`.

    Subclasses register ``gpt`` and ``tokenizer`` (plus their own components), and implement
    :meth:`body_layout`, :meth:`group_inputs`, :meth:`draw_group`, :meth:`finish`, and for training
    :meth:`teacher_inputs` and :meth:`body_loss`.
    """

    gpt: GPT

    # ---- checks ----------------------------------------------------------------------------------
    def _check_common(self, gpt: GPT, class_names: Sequence[str] | None) -> None:
        if not isinstance(gpt, GPT):
            raise TypeError(f"gpt must be an mmgen.GPT, got {type(gpt).__name__}")
        if not gpt.cfg.start_token:
            raise ValueError("gpt must be built with start_token=True: the first group's slots take the start embedding")
        if class_names is not None:
            if not all(isinstance(n, str) and n.strip() for n in class_names):
                raise ValueError("class_names must be a list of non-empty strings")
            if len(class_names) != gpt.cfg.num_classes:
                raise ValueError(f"class_names has {len(class_names)} names, the GPT has num_classes={gpt.cfg.num_classes}")

    # ---- conditioning ----------------------------------------------------------------------------
    def prepare_condition(
        self,
        *,
        prompt: str | Sequence[str] | None,
        class_labels: int | Sequence[int] | torch.Tensor | None,
        num_samples_per_prompt: int,
        guided: bool,
    ) -> Condition:
        """Turn ``prompt`` / ``class_labels`` into prefix embeddings, repeated ``num_samples_per_prompt`` times."""
        if isinstance(num_samples_per_prompt, bool) or not isinstance(num_samples_per_prompt, int) or num_samples_per_prompt < 1:
            raise ValueError(f"num_samples_per_prompt must be a positive int, got {num_samples_per_prompt!r}")
        if prompt is not None and class_labels is not None:
            raise ValueError("pass prompt or class_labels, not both")
        cfg = self.gpt.cfg
        if guided and not self.config.get("null_condition_trained", False):
            raise ValueError(
                "guidance_scale != 1 needs a model trained with a null condition (cond_drop_prob > 0); "
                "this pipeline's null_condition_trained is False, so use guidance_scale=1"
            )
        repeat = num_samples_per_prompt
        if prompt is not None:
            prompts = self._check_prompts(prompt)
            if cfg.text_max_len:
                text = [p for p in prompts for _ in range(repeat)]
                ids = self.gpt.encode_text(text)
                null = torch.full_like(ids, TEXT_PAD_ID)
                prefix = self.gpt.embed_text(torch.cat([ids, null]) if guided else ids)
                return Condition(prefix, len(text), guided, [None] * len(text), text)
            labels = [self._class_of_prompt(p) for p in prompts]
            return self._class_condition(labels, repeat, guided, prompts)
        if class_labels is not None:
            return self._class_condition(self._check_class_labels(class_labels), repeat, guided, None)
        if cfg.num_classes:
            return self._class_condition([cfg.null_class_id], repeat, guided, None, allow_null=True)
        if cfg.text_max_len:
            null = torch.full((repeat * (2 if guided else 1), cfg.text_max_len), TEXT_PAD_ID, dtype=torch.long, device=self.device)
            return Condition(self.gpt.embed_text(null), repeat, guided, [None] * repeat, [""] * repeat)
        if guided:
            raise ValueError("guidance_scale != 1 needs a conditional model (num_classes or text_max_len > 0)")
        empty = torch.zeros(repeat, 0, cfg.dim, device=self.device, dtype=self.gpt.dtype)
        return Condition(empty, repeat, False, [None] * repeat, [""] * repeat)

    @staticmethod
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

    def _class_of_prompt(self, prompt: str) -> int:
        names = self.config.get("class_names")
        if not names:
            raise ValueError("prompt given, but the GPT has no text conditioning (text_max_len=0) and the pipeline no class_names")
        key = " ".join(prompt.lower().split())
        lookup = {" ".join(n.lower().split()): i for i, n in enumerate(names)}
        if key not in lookup:
            raise ValueError(f"prompt {prompt!r} is not one of the class names this model knows, e.g. {list(names)[:3]}")
        return lookup[key]

    def _check_class_labels(self, class_labels: int | Sequence[int] | torch.Tensor) -> list[int]:
        if self.gpt.cfg.num_classes == 0:
            raise ValueError("class_labels given, but the GPT was built with num_classes=0 (no class conditioning)")
        if isinstance(class_labels, torch.Tensor):
            if class_labels.is_floating_point() or class_labels.dim() > 1:
                raise TypeError("class_labels must be an int, a list of ints or a 1-D integer tensor")
            labels = class_labels.flatten().tolist()
        else:
            labels = [class_labels] if isinstance(class_labels, numbers.Integral) else list(class_labels)
        if not labels:
            raise ValueError("class_labels must not be empty")
        for label in labels:
            if isinstance(label, (bool, np.bool_)) or not isinstance(label, numbers.Integral):
                raise TypeError(f"class_labels must hold ints, got {label!r}")
            if not 0 <= label < self.gpt.cfg.num_classes:
                raise ValueError(f"unknown class id {label}: class_labels must lie in [0, {self.gpt.cfg.num_classes})")
        return [int(label) for label in labels]

    def _class_condition(self, labels: list[int], repeat: int, guided: bool, prompts: list[str] | None,
                         *, allow_null: bool = False) -> Condition:
        rows = [label for label in labels for _ in range(repeat)]
        ids = torch.tensor(rows, dtype=torch.long, device=self.device)
        if guided:
            ids = torch.cat([ids, torch.full_like(ids, self.gpt.cfg.null_class_id)])
        texts = [""] * len(rows) if prompts is None else [p for p in prompts for _ in range(repeat)]
        class_ids = [None if allow_null else label for label in rows]
        return Condition(self.gpt.embed_class(ids), len(rows), guided, class_ids, texts)

    def training_prefix(self, *, class_labels: torch.Tensor | None, prompt: Sequence[str] | None, batch_size: int,
                        cond_drop_prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """Prefix embeddings ``[B, P, dim]`` for training, each row replaced by the null condition with ``cond_drop_prob``."""
        if not 0.0 <= cond_drop_prob < 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1), got {cond_drop_prob}")
        drop = torch.rand(batch_size, generator=generator, device="cpu") < cond_drop_prob
        if prompt is not None:
            if isinstance(prompt, str) or not all(isinstance(p, str) for p in prompt):
                raise TypeError("prompt must be a list of str (one per training image; \"\" is the null prompt)")
            ids = self.gpt.encode_text(list(prompt))
            ids[drop.to(ids.device)] = TEXT_PAD_ID
            return self.gpt.embed_text(ids)
        if class_labels is not None:
            labels = torch.as_tensor(class_labels, dtype=torch.long, device=self.device).clone()
            labels[drop.to(labels.device)] = self.gpt.cfg.null_class_id
            return self.gpt.embed_class(labels)
        if self.gpt.cfg.num_classes or self.gpt.cfg.text_max_len:
            raise ValueError("this GPT is conditional: pass class_labels or prompt to the loss")
        return torch.zeros(batch_size, 0, self.gpt.cfg.dim, device=self.device, dtype=self.gpt.dtype)

    # ---- hooks -------------------------------------------------------------------------------------
    def body_layout(self, **kwargs: Any) -> TokenLayout:
        """Layout of the body (without the prefix), one group per generation step."""
        raise NotImplementedError

    def group_inputs(self, group: int, state: list[Any], batch_size: int) -> torch.Tensor:
        """Input embeddings ``[B, n_group, dim]`` of ``group``'s slots, from what was drawn before."""
        raise NotImplementedError

    def draw_group(self, group: int, hidden_RnD: torch.Tensor, *, state: list[Any], guidance: float,
                   seeds_B: torch.Tensor, slot_offset: int, options: dict[str, Any]) -> Any:
        """Draw group ``group``'s tokens from the GPT's hidden states at its slots (cond rows first under guidance).

        ``state`` holds what earlier groups drew; the return value is appended to it.
        """
        raise NotImplementedError

    def finish(self, state: list[Any]) -> tuple[Any, torch.Tensor | None]:
        """``(tokens, images [B, 3, H, W] in [-1, 1])`` from the drawn groups; images None if not decodable."""
        raise NotImplementedError

    def teacher_inputs(self, tokens: Any, *, generator: torch.Generator | None = None) -> tuple[torch.Tensor, Any]:
        """Training: body inputs ``[B, L, dim]`` under teacher forcing, and the targets for :meth:`body_loss`."""
        raise NotImplementedError

    def body_loss(self, hidden_BLD: torch.Tensor, targets: Any, *, generator: torch.Generator | None) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def categorical_loss(self, hidden_BLD: torch.Tensor, ids_BL: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy of the GPT's categorical head against the true ids (teacher forcing), with accuracy."""
        logits = self.gpt.logits(hidden_BLD)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), ids_BL.flatten())
        accuracy = (logits.argmax(-1) == ids_BL).float().mean()
        return loss, {"ce": loss.item(), "accuracy": accuracy.item()}

    # ---- the loop ----------------------------------------------------------------------------------
    def _generate(
        self,
        cond: Condition,
        *,
        layout: TokenLayout,
        guidance: GuidanceSchedule,
        generator: torch.Generator | list[torch.Generator] | None,
        callback_on_step_end: Callable[..., dict[str, Any]] | None,
        options: dict[str, Any],
    ) -> list[Any]:
        B, R, P = cond.batch_size, cond.prefix_RPD.shape[0], cond.num_prefix
        groups = layout.groups[0].tolist()
        sizes = [groups.count(g) for g in range(max(groups) + 1)]
        full = layout.with_prefix(P).to(self.device)
        seeds_B = draw_seeds(generator, B)
        self.gpt.setup_cache(R, P + sum(sizes))
        state: list[Any] = []
        pos, slot = 0, 0
        try:
            with self.progress_bar(total=len(sizes)) as bar:
                for g, n in enumerate(sizes):
                    x = self.group_inputs(g, state, B)
                    if cond.guided:
                        x = torch.cat([x, x])
                    if g == 0:
                        x = torch.cat([cond.prefix_RPD.to(x.dtype), x], dim=1)
                    hidden = self.gpt.hidden_states(x, layout=full, start_pos=pos)[:, -n:]
                    pos += x.shape[1]
                    scale = guidance.scale_at(g, len(sizes)) if cond.guided else 1.0
                    state.append(self.draw_group(g, hidden, state=state, guidance=scale, seeds_B=seeds_B,
                                                 slot_offset=slot, options=options))
                    slot += n
                    if callback_on_step_end is not None:  # its return value is not used: tokens are not editable mid-run
                        callback_on_step_end(self, g, g, {"tokens": state[-1]})
                    bar.update()
        finally:
            self.gpt.clear_cache()
        return state

    def sample_ids(self, logits_RnV: torch.Tensor, *, guidance: float, seeds_B: torch.Tensor, slot_offset: int,
                   options: dict[str, Any]) -> torch.Tensor:
        """Draw ids ``[B, n]`` from a group's logits with :func:`mmgen.sampling.sample`; token seeds = sample seed + slot."""
        if logits_RnV.shape[0] == 2 * seeds_B.shape[0]:
            cond, uncond = logits_RnV.chunk(2)
        else:
            cond, uncond = logits_RnV, None
        B, n, V = cond.shape
        seeds = (seeds_B.view(B, 1) + torch.arange(slot_offset, slot_offset + n).view(1, n)).reshape(-1)
        ids = sample(
            cond.reshape(B * n, V).float(),
            uncond_logits=None if uncond is None else uncond.reshape(B * n, V).float(),
            guidance_scale=guidance,
            temperature=options["temperature"],
            top_k=options["top_k"],
            top_p=options["top_p"],
            min_p=options["min_p"],
            seed=seeds.to(cond.device),
        )
        return ids.view(B, n)

    def _run(
        self,
        *,
        prompt: str | Sequence[str] | None,
        class_labels: int | Sequence[int] | torch.Tensor | None,
        num_samples_per_prompt: int,
        guidance_scale: float | GuidanceSchedule,
        generator: torch.Generator | list[torch.Generator] | None,
        output_type: str,
        return_dict: bool,
        callback_on_step_end: Callable[..., dict[str, Any]] | None,
        layout_kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> ARImagePipelineOutput | tuple:
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        guidance = guidance_scale if isinstance(guidance_scale, GuidanceSchedule) else GuidanceSchedule(scale=float(guidance_scale))
        guided = not (guidance.kind == "constant" and guidance.scale == 1.0)
        cond = self.prepare_condition(prompt=prompt, class_labels=class_labels,
                                      num_samples_per_prompt=num_samples_per_prompt, guided=guided)
        layout = self.body_layout(**layout_kwargs)
        state = self._generate(cond, layout=layout, guidance=guidance, generator=generator,
                               callback_on_step_end=callback_on_step_end, options=options)
        tokens, images = self.finish(state)
        images = None if output_type == "tokens" else to_output_images(images, output_type)
        if not return_dict:
            return (images, tokens)
        return ARImagePipelineOutput(images=images, tokens=tokens)

    # ---- training ----------------------------------------------------------------------------------
    def loss(
        self,
        tokens: Any,
        *,
        class_labels: torch.Tensor | None = None,
        prompt: Sequence[str] | None = None,
        cond_drop_prob: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss of this paradigm on tokens from :meth:`tokenize` (one GPT forward over the whole sequence).

        ``cond_drop_prob`` replaces that share of conditions by the null condition, which classifier-free
        guidance needs at sampling time; a positive value marks the pipeline ``null_condition_trained``.
        """
        inputs_BLD, targets = self.teacher_inputs(tokens, generator=generator)
        B = inputs_BLD.shape[0]
        prefix = self.training_prefix(class_labels=class_labels, prompt=prompt, batch_size=B,
                                      cond_drop_prob=cond_drop_prob, generator=generator)
        if cond_drop_prob > 0 and not self.config.get("null_condition_trained", False):
            self.register_to_config(null_condition_trained=True)
        P = prefix.shape[1]
        layout = self.body_layout().with_prefix(P).to(inputs_BLD.device)
        hidden = self.gpt.hidden_states(torch.cat([prefix.to(inputs_BLD.dtype), inputs_BLD], dim=1), layout=layout)
        return self.body_loss(hidden[:, P:], targets, generator=generator)

    # ---- saving and loading ------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        """diffusers' ``save_pretrained`` plus a one-line module that lets the generic loader find our class.

        ``model_index.json`` names the class as ``["mmgen_pipeline", "<ClassName>"]``, so
        ``diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` loads it.
        """
        super().save_pretrained(save_directory, **kwargs)
        folder = Path(save_directory)
        (folder / f"{SHIM_MODULE}.py").write_text(SHIM_SOURCE)
        index_file = folder / "model_index.json"
        index = json.loads(index_file.read_text())
        index["_class_name"] = [SHIM_MODULE, type(self).__name__]
        write_text_atomically(index_file, json.dumps(index, indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> "ARImagePipeline":  # type: ignore[override]
        """Load a saved pipeline; the folder's ``mmgen_pipeline.py`` is trusted only if it is exactly the one mmgen writes."""
        folder = pretrained_model_name_or_path = resolve_pipeline_path(pretrained_model_name_or_path, kwargs)
        if folder.is_dir():
            if not (folder / "model_index.json").is_file():
                raise ValueError(f"{folder} is not a saved pipeline: expected model_index.json in it")
            shim = folder / f"{SHIM_MODULE}.py"
            if "trust_remote_code" not in kwargs and shim.is_file() and shim.read_text() == SHIM_SOURCE:
                kwargs["trust_remote_code"] = True
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if not isinstance(pipe, cls):
            raise ValueError(f"{pretrained_model_name_or_path} holds a {type(pipe).__name__}, not a {cls.__name__}")
        return pipe


def draw_seeds(generator: torch.Generator | list[torch.Generator] | None, batch_size: int) -> torch.Tensor:
    """One int64 seed per sample: from its own generator (a list, diffusers-style), or drawn in order from one."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch_size:
            raise ValueError(f"generator is a list of {len(generator)}, but {batch_size} images are generated; pass one per image")
        return torch.cat([torch.randint(0, SEED_HIGH, (1,), generator=g, device=g.device).cpu() for g in generator])
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")
    device = "cpu" if generator is None else generator.device
    return torch.randint(0, SEED_HIGH, (batch_size,), generator=generator, device=device).cpu()


def to_output_images(images_BCHW: torch.Tensor, output_type: str) -> list[PIL.Image.Image] | np.ndarray | torch.Tensor:
    """Images in [-1, 1] → ``output_type``: "pt" ``[B, 3, H, W]``, "np" ``[B, H, W, 3]`` (both in [0, 1]) or "pil"."""
    pt = (images_BCHW.float() / 2 + 0.5).clamp(0, 1).cpu()
    if output_type == "pt":
        return pt
    arr = pt.permute(0, 2, 3, 1).numpy()
    if output_type == "np":
        return arr
    return [PIL.Image.fromarray((a * 255).round().astype(np.uint8)) for a in arr]
