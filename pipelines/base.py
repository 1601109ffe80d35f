"""What every pipeline shares: components, the call, training loss, outputs, saving — for any modality.

A pipeline is four components and a paradigm:

- ``tokenizer`` — any :class:`mmgen.protocol.Tokenizer` (image, video, audio, 3D);
- ``conditioner`` — a :mod:`mmgen.conditioning` conditioner (class labels, byte text, a text encoder),
  giving the prefix, its padding mask and an optional AdaLN vector;
- ``gpt`` — the shared :class:`mmgen.GPT` trunk;
- ``head`` — a :mod:`mmgen.heads` head (categorical over 1..D codebooks, depth, flow).

A paradigm subclass only says which :mod:`mmgen.patterns` pattern orders the tokens and which input
rule (:mod:`mmgen.programs`) feeds each group; :func:`mmgen.generation.generate` runs the loop and
:func:`mmgen.generation.teacher_hidden` the training forward. Nothing here knows a modality: decoded
outputs become the tokenizer's modality's output class (:mod:`pipelines.outputs`).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, replace
from importlib import import_module
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from diffusers import DiffusionPipeline

from mmgen.conditioning import ClassConditioner, Conditioner
from mmgen.draft_gate import DraftGate
from mmgen.files import write_text_atomically
from mmgen.drafts import JacobiDraft, ModelDraft, NGramDraft, RecycledDraft
from mmgen.generation import draw_seeds, generate, teacher_hidden
from mmgen.gpt import GPT, GPTConfig
from mmgen.heads import CategoricalHead, DepthHead, Head
from mmgen.hub import SHIM_MODULE, SHIM_SOURCE, config_from_dict, resolve_pipeline_path
from mmgen.programs import DrawnOrder, PatternProgram
from mmgen.protocol import check_tokenizer
from mmgen.sampling import GuidanceSchedule, SamplingConfig
from mmgen.speculative import DecodingStats, DraftSource, generate_speculative
from mmgen.tokens import ContinuousContent, TokenContent

from .outputs import check_output_type, make_output

__all__ = ["ARPipeline", "SequencePlan", "head_for"]

OWN_PACKAGES = ("mmgen", "tokenizers_visual", "tokenizers_audio")


@dataclass(frozen=True)
class SequencePlan:
    """How a paradigm lays out a tokenizer's tokens: the pattern, what a sequence position holds, extra inputs.

    ``content``: what the head draws at a position (ids over D codebooks, or latents). ``input_content``:
    what the GPT's inputs take when it differs (the delay pattern's reserved empty id makes every input
    vocabulary one larger than the head's). ``context_dim``: channels of inputs the tokenizer computes
    itself (VAR's next-scale features), 0 when there are none. :meth:`gpt_fields` are the GPT config entries that
    follow; the trainer builds the GPT from them, the pipeline checks a given GPT against them.
    """

    pattern: Any
    content: TokenContent
    context_dim: int = 0
    input_content: TokenContent | None = None

    def gpt_fields(self) -> dict[str, Any]:
        inputs = self.input_content or self.content
        continuous = isinstance(inputs, ContinuousContent)
        sizes = [] if continuous else list(inputs.codebook_sizes)
        return {
            "vocab_size": 0 if continuous else (sizes[0] if len(sizes) == 1 else sizes),
            "coord_rank": self.pattern.layout().coord_rank,
            "input_dim": inputs.dim if continuous else self.context_dim,
        }


class ARPipeline(DiffusionPipeline):
    """Base of :class:`NextTokenPipeline`, :class:`NextScalePipeline` and :class:`NextXPipeline`.

    A subclass implements :meth:`plan` (with :meth:`plan_options`, the config entries it reads) and
    :meth:`input_rule`; :meth:`to_sequence` / :meth:`from_sequence` map the tokenizer's positions to the
    pattern's sequence (the pattern's own maps by default).
    """

    model_cpu_offload_seq = "conditioner->gpt->head->tokenizer"
    gpt: GPT
    head: Head
    conditioner: Conditioner

    def _register(self, *, gpt: GPT, tokenizer: Any, head: Head, conditioner: Conditioner,
                  class_names: list[str] | None, null_condition_trained: bool, **config: Any) -> None:
        """Check that the four components fit together, then register them and the config."""
        check_tokenizer(tokenizer)
        if not isinstance(gpt, GPT):
            raise TypeError(f"gpt must be an mmgen.GPT, got {type(gpt).__name__}")
        if not isinstance(head, Head):
            raise TypeError(f"head must be an mmgen.heads.Head (CategoricalHead, DepthHead, FlowHead), got {type(head).__name__}")
        if not isinstance(conditioner, Conditioner):
            raise TypeError(f"conditioner must be an mmgen.conditioning.Conditioner, got {type(conditioner).__name__}")
        if not gpt.cfg.start_token and not conditioner.gives_start:
            raise ValueError("gpt must be built with start_token=True: the first group's slots take the start embedding "
                             "(unless the conditioner fills them, a ClassConditioner with as_start=True)")
        if conditioner.dim != gpt.cfg.dim:
            raise ValueError(f"conditioner.dim={conditioner.dim} does not match the GPT's dim={gpt.cfg.dim}")
        if conditioner.adaln_dim != gpt.cfg.adaln_dim:
            raise ValueError(f"conditioner.adaln_dim={conditioner.adaln_dim} does not match the GPT's adaln_dim={gpt.cfg.adaln_dim}")
        if class_names is not None:
            if not all(isinstance(n, str) and n.strip() for n in class_names):
                raise ValueError("class_names must be a list of non-empty strings")
            num_classes = getattr(conditioner.config, "num_classes", None)
            if num_classes is None:
                raise ValueError("class_names are for a class conditioner (they name its classes); this conditioner takes text")
            if len(class_names) != num_classes:
                raise ValueError(f"class_names has {len(class_names)} names, the conditioner has num_classes={num_classes}")
        self.register_modules(gpt=gpt, tokenizer=tokenizer, head=head, conditioner=conditioner)
        self.register_to_config(class_names=class_names, null_condition_trained=null_condition_trained, **config)
        self._check_fit()

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, *, conditioner: Conditioner, gpt: dict[str, Any] | None = None,
                       head: Head | dict[str, Any] | None = None, **config: Any) -> "ARPipeline":
        """A fresh pipeline around ``tokenizer``: the GPT's vocabulary, coordinates and inputs follow from the plan.

        ``gpt``: the remaining :class:`~mmgen.GPTConfig` fields (size); ``head``: a head, or the fields of the
        default one (``{"class": "DepthHead", ...}`` picks another); ``config``: the pipeline's own options.
        """
        plan_args = {k: config[k] for k in inspect.signature(cls.plan).parameters if k in config}
        plan = cls.plan(tokenizer, **plan_args)
        fields = dict(gpt or {})
        derived = plan.gpt_fields()
        clash = sorted(k for k in derived if k in fields and fields[k] != derived[k])
        if clash:
            raise ValueError(f"gpt: {clash} are fixed by the tokenizer and pipeline ({ {k: derived[k] for k in clash} }); remove them")
        fields.update(derived, start_token=True)
        fields.setdefault("adaln_dim", conditioner.adaln_dim)
        fields.setdefault("max_seq_len", conditioner.max_prefix + plan.pattern.num_positions)
        model = GPT(config_from_dict(GPTConfig, fields, source="gpt"))
        if not isinstance(head, Head):
            head = head_for(plan.content, dim=model.cfg.dim, **(head or {}))
        return cls(gpt=model, tokenizer=tokenizer, head=head, conditioner=conditioner, **config)

    # ---- the paradigm ------------------------------------------------------------------------------
    @classmethod
    def plan(cls, tokenizer: Any, **options: Any) -> SequencePlan:
        """How this paradigm orders ``tokenizer``'s tokens under its config ``options`` (see :class:`SequencePlan`)."""
        raise NotImplementedError

    def plan_options(self) -> dict[str, Any]:
        """The config entries :meth:`plan` reads."""
        return {}

    def pattern(self, **options: Any) -> Any:
        """The :mod:`mmgen.patterns` pattern of one sample (``options``: per-call choices such as ``num_tokens``)."""
        return self.plan(self.tokenizer, **self.plan_options(), **options).pattern

    def input_rule(self) -> Any:
        """The :mod:`mmgen.programs` input rule of groups 1..K−1."""
        raise NotImplementedError

    def program(self, *, start_inputs: torch.Tensor | None = None, **options: Any) -> Any:
        """The engine :class:`~mmgen.generation.Program` of one call: the pattern's groups, or a drawn order's own program.

        ``start_inputs``: the first group's inputs when the conditioning gives them (``Conditioning.start_R1D``).
        """
        pattern = self.pattern(**options)
        if isinstance(pattern, DrawnOrder):
            if start_inputs is not None:
                raise ValueError("a conditioner that fills the first group's slot (as_start) needs a fixed pattern; "
                                 "a drawn order (octrees) starts from the GPT's own start embedding")
            return pattern.program(gpt=self.gpt)
        return PatternProgram(gpt=self.gpt, pattern=pattern, rule=self.input_rule(), start_inputs=start_inputs)

    def to_sequence(self, positions: Any) -> torch.Tensor:
        return self.pattern().to_sequence(positions)

    def from_sequence(self, seq: torch.Tensor, **options: Any) -> Any:
        return self.pattern(**options).from_sequence(seq)

    def _check_fit(self) -> None:
        """The GPT and the head must take exactly the tokens of the plan, and the prefix plus body must fit."""
        plan = self.plan(self.tokenizer, **self.plan_options())
        cfg = self.gpt.cfg
        for name, want in plan.gpt_fields().items():
            if getattr(cfg, name) != want:
                raise ValueError(f"the GPT's {name}={getattr(cfg, name)!r} does not fit {type(self).__name__} over this tokenizer "
                                 f"(its tokens need {name}={want!r})")
        if self.head.hidden_dim != cfg.dim:
            raise ValueError(f"the head reads hidden states of width {self.head.hidden_dim}, the GPT's dim is {cfg.dim}")
        if self.head.content != plan.content:
            raise ValueError(f"the head models {self.head.content}, but this pipeline's sequence holds {plan.content}")
        body = plan.pattern.num_positions
        if self.conditioner.max_prefix + body > cfg.max_seq_len:
            raise ValueError(f"the prefix ({self.conditioner.max_prefix}) plus the body ({body} positions) exceed the GPT's "
                             f"max_seq_len={cfg.max_seq_len}")

    # ---- tokens ------------------------------------------------------------------------------------
    @torch.no_grad()
    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """Data (images ``[B, 3, H, W]`` in [-1, 1], …) → the sequence the GPT learns, in the head's space."""
        positions = self.tokenizer.to_positions(self.tokenizer.encode(x))
        return self.to_sequence(_each(positions, self.head.normalize_tokens))

    def sequence_lengths(self, seq: torch.Tensor) -> torch.Tensor | None:
        """Each training sequence's own length ``[N]`` where they differ (a drawn order's), else None (all are whole)."""
        pattern = self.pattern()
        return pattern.lengths(seq) if isinstance(pattern, DrawnOrder) else None

    def decode_sequence(self, seq: torch.Tensor, **options: Any) -> torch.Tensor:
        """A generated sequence → the tokenizer's native tokens (what ``tokenizer.decode`` takes)."""
        positions = self.from_sequence(seq, **options)
        return self.tokenizer.from_positions(_each(positions, self.head.denormalize_tokens))

    # ---- training ----------------------------------------------------------------------------------
    @torch.no_grad()
    def set_latent_statistics(self, x: torch.Tensor) -> None:
        """Fit a continuous head's per-channel latent mean / std on data ``x`` (before training the GPT)."""
        if not callable(getattr(self.head, "set_latent_statistics", None)):
            raise ValueError("set_latent_statistics is for continuous heads (FlowHead); this pipeline's head draws ids")
        positions = self.tokenizer.to_positions(self.tokenizer.encode(x))
        self.head.set_latent_statistics(positions.reshape(-1, positions.shape[-1]))

    def loss(
        self,
        tokens: torch.Tensor,
        *,
        class_labels: torch.Tensor | None = None,
        prompt: Sequence[str] | None = None,
        cond_drop_prob: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss on a sequence from :meth:`tokenize`: one teacher-forced GPT forward over every group.

        ``cond_drop_prob`` replaces that share of conditions by the null condition, which classifier-free
        guidance needs at sampling time; a positive value marks the pipeline ``null_condition_trained``.
        """
        if not isinstance(tokens, torch.Tensor) or tokens.dim() < 2:
            got = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise TypeError(f"tokens must be a [B, L, ...] sequence from tokenize(), got {got}")
        cond = self.conditioner.training_condition(class_labels=class_labels, prompt=prompt, batch_size=tokens.shape[0],
                                                   cond_drop_prob=cond_drop_prob, generator=generator)
        teacher = self.program(start_inputs=cond.start_R1D).teacher(tokens, generator=generator)
        if cond_drop_prob > 0 and not self.config.get("null_condition_trained", False):
            self.register_to_config(null_condition_trained=True)
        hidden = teacher_hidden(self.gpt, cond, teacher.inputs_BLD, teacher.layout)
        return self.head.loss(hidden, teacher.targets, mask=teacher.mask, generator=generator)

    def _check_known_ids(self, tokens: torch.Tensor, *, name: str, **options: Any) -> None:
        """Known sequence tokens (a prefill, tokens to score) must be valid ids of what the GPT's inputs take."""
        plan = self.plan(self.tokenizer, **self.plan_options(), **options)
        _check_ids(plan.input_content or plan.content, tokens, name=name)

    # ---- scoring -----------------------------------------------------------------------------------
    @torch.no_grad()
    def log_likelihood(self, seq: torch.Tensor, *, class_labels: torch.Tensor | Sequence[int] | None = None,
                       prompt: Sequence[str] | None = None) -> torch.Tensor:
        """``log p(seq | condition)`` per row ``[B]`` in nats, by one teacher-forced forward (no guidance).

        ``seq``: a sequence from :meth:`tokenize`, or its first positions (what ``prefill`` takes); only those
        are scored, the causal GPT never lets later positions change them. One condition
        per row: ``class_labels`` (the null class id allowed) or ``prompt`` (``""`` is the null prompt).
        """
        if isinstance(self.head.content, ContinuousContent):
            raise ValueError(f"log_likelihood scores ids; this pipeline's {type(self.head).__name__} draws continuous "
                             f"latents, which have no exact likelihood here")
        _check_known(seq)
        if class_labels is None and prompt is None:
            raise ValueError("log_likelihood needs one condition per row: pass class_labels (the null class id allowed) "
                             "or prompt ('' is the null prompt)")
        B, m = seq.shape[:2]
        cond = self.conditioner.training_condition(class_labels=class_labels, prompt=prompt, batch_size=B, cond_drop_prob=0.0)
        program = self.program(start_inputs=cond.start_R1D)
        length = program.num_positions
        if m > length:
            raise ValueError(f"seq holds {m} positions; this pipeline's sequences have {length}")
        self._check_known_ids(seq, name="seq")
        padded = torch.cat([seq, seq.new_zeros((B, length - m, *seq.shape[2:]))], dim=1)  # id 0: any valid id
        teacher = program.teacher(padded)
        known_BL = (torch.arange(length, device=seq.device) < m).expand(B, length)
        mask = known_BL if teacher.mask is None else teacher.mask & known_BL.view(B, length, *([1] * (teacher.mask.dim() - 2)))
        hidden = teacher_hidden(self.gpt, cond, teacher.inputs_BLD, teacher.layout)
        return self.head.log_likelihood(hidden, teacher.targets, mask=mask)

    @torch.no_grad()
    def class_posterior(self, seq: torch.Tensor, *, candidates: Sequence[int] | Sequence[str] | None = None,
                        batch_size: int = 256) -> torch.Tensor:
        """Log posterior ``[B, C]`` over candidate conditions of known tokens (uniform prior): which condition the
        model reads in them, e.g. the class of a given first frame for image-to-video without a caption.

        ``candidates``: class ids, or prompts; by default every class of a class conditioner. ``seq`` as in
        :meth:`log_likelihood`; ``batch_size`` rows (sequence × candidate) go through one forward.
        """
        if candidates is None:
            if not isinstance(self.conditioner, ClassConditioner):
                raise ValueError(f"candidates must list the prompts to weigh: this pipeline's "
                                 f"{type(self.conditioner).__name__} has no fixed set of classes")
            candidates = list(range(self.conditioner.null_class_id))
        candidates = list(candidates)
        if not candidates or not (all(isinstance(c, str) for c in candidates)
                                  or all(isinstance(c, int) and not isinstance(c, bool) for c in candidates)):
            raise ValueError(f"candidates must be a non-empty list of class ids or of prompts, got {candidates!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        _check_known(seq)
        key = "prompt" if isinstance(candidates[0], str) else "class_labels"
        B, C = seq.shape[0], len(candidates)
        rows = [(b, c) for b in range(B) for c in range(C)]
        scores = []
        for first in range(0, len(rows), batch_size):
            chunk = rows[first : first + batch_size]
            scores.append(self.log_likelihood(seq[[b for b, _ in chunk]], **{key: [candidates[c] for _, c in chunk]}))
        return torch.cat(scores).view(B, C).log_softmax(-1)

    # ---- generation --------------------------------------------------------------------------------
    def _run(
        self,
        *,
        prompt: str | Sequence[str] | None,
        class_labels: int | Sequence[int] | torch.Tensor | None,
        num_samples_per_prompt: int,
        guidance_scale: float | GuidanceSchedule,
        sampling: SamplingConfig,
        generator: torch.Generator | list[torch.Generator] | None,
        output_type: str | None,
        return_dict: bool,
        callback_on_step_end: Callable[..., dict[str, Any]] | None,
        prefill: torch.Tensor | None = None,
        options: dict[str, Any] | None = None,
        decoding: str | DraftSource | None = None,
        draft_model: ARPipeline | None = None,
        gated: bool = True,
    ) -> Any:
        output_type = check_output_type(self.tokenizer.modality, output_type)
        if not isinstance(gated, bool):
            raise TypeError(f"gated must be a bool, got {gated!r}")
        decoding = _check_decoding(decoding, draft_model)
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise TypeError(f"callback_on_step_end must be None or a callable, got {type(callback_on_step_end).__name__}")
        if isinstance(self.head.content, ContinuousContent) and (sampling.top_k, sampling.top_p, sampling.min_p) != (0, 1.0, 0.0):
            raise ValueError(f"top_k / top_p / min_p filter the ids of a categorical head; this pipeline's "
                             f"{type(self.head).__name__} draws continuous latents (use temperature and num_flow_steps)")
        sampling = _with_guidance(sampling, guidance_scale)
        guided = not (sampling.guidance_schedule == "constant" and sampling.guidance_scale == 1.0)
        if guided and not self.config.get("null_condition_trained", False):
            raise ValueError(
                "guidance_scale != 1 needs a model trained with a null condition (cond_drop_prob > 0); "
                "this pipeline's null_condition_trained is False, so use guidance_scale=1"
            )
        cond = self.conditioner.condition(prompt=prompt, class_labels=class_labels, num_samples_per_prompt=num_samples_per_prompt,
                                          guided=guided, class_names=self.config.get("class_names"))
        options = options or {}
        program = self.program(start_inputs=cond.start_R1D, **options)
        if isinstance(prefill, torch.Tensor):  # anything else: generate's own error
            self._check_known_ids(prefill, name="prefill", **options)
        seeds_B = draw_seeds(generator, cond.batch_size)

        def callback(step: int, tokens: torch.Tensor) -> torch.Tensor | None:
            if callback_on_step_end is None:
                return None
            returned = callback_on_step_end(self, step, step, {"tokens": tokens})
            replaced = returned.get("tokens") if isinstance(returned, dict) else None
            if replaced is not None:
                if not isinstance(replaced, torch.Tensor) or replaced.shape != tokens.shape:
                    got = tuple(replaced.shape) if isinstance(replaced, torch.Tensor) else type(replaced).__name__
                    raise ValueError(f"callback_on_step_end returned tokens of shape {got}; they replace the drawn ones, "
                                     f"of shape {tuple(tokens.shape)}")
                _check_ids(self.head.content, replaced, name="the tokens callback_on_step_end returned")
            return replaced

        with self.progress_bar(total=program.num_steps) as bar:
            if decoding == "plain":
                seq, _ = generate(self.gpt, self.head, program, cond, sampling=sampling, seeds_B=seeds_B,
                                  capacity=program.num_positions, prefill=prefill, callback=callback, progress=bar.update)
            else:
                condition = {"prompt": prompt, "class_labels": class_labels, "num_samples_per_prompt": num_samples_per_prompt,
                             "guided": guided}
                draft = self._draft_source(decoding, draft_model, condition, sampling, seeds_B, options)
                seq, _ = generate_speculative(self.gpt, self.head, program, cond, draft=draft, sampling=sampling,
                                              seeds_B=seeds_B, capacity=program.num_positions, prefill=prefill,
                                              callback=callback, progress=bar.update, stats=self._new_decoding_stats(),
                                              gate=self._draft_gate(decoding) if gated else None)
        native = self.decode_sequence(seq, **options)
        decoded = None if output_type == "tokens" else self.tokenizer.decode(native)
        return make_output(self.tokenizer, decoded, native, output_type=output_type, return_dict=return_dict)

    def compile_decoding(self, enabled: bool = True, *, freeze: bool = False) -> None:
        """Compile the one-position decode step: the GPT's (:meth:`mmgen.GPT.compile_decoding`) and, where it has
        one, the head's logits. ``freeze=True`` folds the weights in: call this again after changing them."""
        self.gpt.compile_decoding(enabled, freeze=freeze)
        compile_head = getattr(self.head, "compile_decoding", None)
        if callable(compile_head):
            compile_head(enabled, freeze=freeze)

    def _draft_source(self, decoding: str | DraftSource, draft_model: ARPipeline | None, condition: dict[str, Any],
                      sampling: SamplingConfig, seeds_B: torch.Tensor, options: dict[str, Any]) -> DraftSource:
        """The draft source a call names: n-gram and recycling sources persist on the pipeline (they learn across calls)."""
        if not isinstance(decoding, str):
            return decoding
        if decoding == "draft":
            if type(draft_model) is not type(self) or draft_model.head.content != self.head.content:
                raise ValueError(f"draft_model must be a {type(self).__name__} over the same tokens (its head draws "
                                 f"{self.head.content}), got {type(draft_model).__name__}")
            if draft_model.gpt is self.gpt:
                raise ValueError("draft_model must have its own GPT (each model keeps its own KV cache); got this pipeline's")
            names = {"class_names": draft_model.config.get("class_names")}
            cond = draft_model.conditioner.condition(**condition, **names)
            return ModelDraft(gpt=draft_model.gpt, head=draft_model.head, program=draft_model.program(start_inputs=cond.start_R1D, **options), cond=cond,
                              sampling=sampling, seeds_B=seeds_B)
        if decoding == "jacobi":
            return JacobiDraft()
        sources = self.__dict__.setdefault("_draft_sources", {})
        if decoding not in sources:
            sources[decoding] = NGramDraft() if decoding == "lookahead" else RecycledDraft()
        return sources[decoding]

    def _draft_gate(self, decoding: str | DraftSource) -> DraftGate:
        """The gate of a named source (or of a kind of source object), kept across calls: it learns what drafting pays here."""
        gates = self.__dict__.setdefault("_draft_gates", {})
        key = decoding if isinstance(decoding, str) else type(decoding)
        if key not in gates:
            gates[key] = DraftGate()
        return gates[key]

    def _new_decoding_stats(self) -> DecodingStats:
        self.__dict__["_decoding_stats"] = DecodingStats()
        return self.__dict__["_decoding_stats"]

    @property
    def decoding_stats(self) -> DecodingStats | None:
        """Forwards and tokens of the last call with ``decoding`` other than ``"plain"`` (None before one)."""
        return self.__dict__.get("_decoding_stats")

    # ---- saving and loading ------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        """diffusers' ``save_pretrained`` plus a one-line module that lets the generic loader find our class.

        ``model_index.json`` names the class as ``["mmgen_pipeline", "<ClassName>"]``, so
        ``diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` loads it.
        """
        super().save_pretrained(save_directory, **kwargs)
        folder = Path(save_directory)
        write_text_atomically(folder / f"{SHIM_MODULE}.py", SHIM_SOURCE)
        index_file = folder / "model_index.json"
        index = json.loads(index_file.read_text())
        index["_class_name"] = [SHIM_MODULE, type(self).__name__]
        write_text_atomically(index_file, json.dumps(index, indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> "ARPipeline":  # type: ignore[override]
        """Load a saved pipeline; the folder's ``mmgen_pipeline.py`` is trusted only if it is exactly the one mmgen writes."""
        folder = pretrained_model_name_or_path = resolve_pipeline_path(pretrained_model_name_or_path, kwargs)
        if folder.is_dir():
            index_file = folder / "model_index.json"
            if not index_file.is_file():
                raise ValueError(f"{folder} is not a saved pipeline: expected model_index.json in it")
            try:
                index = json.loads(index_file.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{index_file} is not valid JSON ({err}); save the pipeline again") from err
            if "conditioner" not in index:
                raise ValueError(f"{folder} was saved by an older mmgen (no conditioner component); "
                                 f"convert it with `mmgen upgrade {folder} NEW_FOLDER`")
            _import_component_modules(index)
            shim = folder / f"{SHIM_MODULE}.py"
            if "trust_remote_code" not in kwargs and shim.is_file() and shim.read_text() == SHIM_SOURCE:
                kwargs["trust_remote_code"] = True
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if not isinstance(pipe, cls):
            raise ValueError(f"{pretrained_model_name_or_path} holds a {type(pipe).__name__}, not a {cls.__name__}")
        return pipe


def sampling_options(*, temperature: float, top_k: int, top_p: float, min_p: float, sampling: SamplingConfig | None,
                     num_flow_steps: int | None = None) -> SamplingConfig:
    """The call's sampling keywords as one :class:`SamplingConfig` (an explicit ``sampling`` wins, with its backend)."""
    if sampling is not None:
        if not isinstance(sampling, SamplingConfig):
            raise TypeError(f"sampling must be an mmgen.SamplingConfig, got {type(sampling).__name__}")
        return sampling
    return SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, num_flow_steps=num_flow_steps)


def _with_guidance(sampling: SamplingConfig, guidance_scale: float | GuidanceSchedule | None) -> SamplingConfig:
    """Put the call's ``guidance_scale`` (a number or a schedule) into ``sampling``; None keeps sampling's own."""
    if guidance_scale is None:
        return sampling
    if isinstance(guidance_scale, GuidanceSchedule):
        g = guidance_scale
        return replace(sampling, guidance_scale=g.scale, guidance_schedule=g.kind, guidance_power=g.power, guidance_interval=g.interval)
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
        raise TypeError(f"guidance_scale must be a number or an mmgen.GuidanceSchedule, got {guidance_scale!r}")
    return replace(sampling, guidance_scale=float(guidance_scale))


def _check_known(seq: torch.Tensor) -> None:
    """Known tokens to score: a tensor ``[B, m, ...]`` with at least one position."""
    if not isinstance(seq, torch.Tensor) or seq.dim() < 2 or seq.shape[1] < 1:
        got = tuple(seq.shape) if isinstance(seq, torch.Tensor) else type(seq).__name__
        raise ValueError(f"seq must be a tensor [B, m, ...] of known tokens from the start of a sequence, got {got}")


def _check_ids(content: TokenContent, tokens: torch.Tensor, *, name: str) -> None:
    """Known tokens given to a call (prefill, a callback's replacement) must be valid ids where the sequence holds ids."""
    if not isinstance(content, ContinuousContent):
        content.check_ids(tokens, name=name)


def _each(positions: torch.Tensor | list[torch.Tensor], fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``fn`` on a position tensor, or on each scale of a pyramid's list."""
    return [fn(p) for p in positions] if isinstance(positions, (list, tuple)) else fn(positions)


def _import_component_modules(index: dict[str, Any]) -> None:
    """Import the modules of our own packages that ``model_index.json`` names, so diffusers can find the component classes.

    Only modules of mmgen's installed packages are imported; anything else is left to diffusers' own rules.
    """
    for entry in index.values():
        if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str):
            if entry[0].split(".")[0] in OWN_PACKAGES:
                import_module(entry[0])


def head_for(content: TokenContent, *, dim: int, **fields: Any) -> Head:
    """A fresh head for what a sequence position holds: categorical for ids, flow for latents; ``class=`` picks another."""
    from mmgen.flow_head import FlowHead

    heads: dict[str, type[Head]] = {"CategoricalHead": CategoricalHead, "DepthHead": DepthHead, "FlowHead": FlowHead}
    continuous = isinstance(content, ContinuousContent)
    name = fields.pop("class", "FlowHead" if continuous else "CategoricalHead")
    if name not in heads:
        raise ValueError(f"head.class: {name!r} is not one of {sorted(heads)}")
    cls = heads[name]
    if (cls is FlowHead) != continuous:
        raise ValueError(f"head.class: {name} does not model {content}")
    sizes = {"latent_dim": content.dim, "cond_dim": dim} if continuous else {"dim": dim, "codebook_sizes": list(content.codebook_sizes)}
    return cls(config_from_dict(cls.config_class, {**sizes, **fields}, source="head"))


DECODINGS = ("plain", "lookahead", "recycling", "jacobi", "draft")


def _check_decoding(decoding: object, draft_model: object) -> str | DraftSource:
    """``decoding`` as a name of :data:`DECODINGS` or a draft source; ``draft_model`` goes with ``"draft"`` only."""
    decoding = "plain" if decoding is None else decoding
    if isinstance(decoding, str):
        if decoding not in DECODINGS:
            raise ValueError(f"decoding must be one of {DECODINGS} or a draft source (mmgen.drafts), got {decoding!r}")
    elif not all(callable(getattr(decoding, name, None)) for name in ("begin", "propose", "observe", "end")):
        raise TypeError(f"decoding must be one of {DECODINGS} or a draft source (mmgen.drafts), got {type(decoding).__name__}")
    if (decoding == "draft") != (draft_model is not None):
        raise ValueError('decoding="draft" needs draft_model= (a small pipeline of the same tokens), and draft_model '
                         f"goes with decoding=\"draft\" only; got decoding={decoding!r} and draft_model={type(draft_model).__name__}")
    return decoding
