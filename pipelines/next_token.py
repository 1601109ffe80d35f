"""LlamaGen-style next-token generation: one position per step, in raster order over any token grid.

The tokens are the tokenizer's grid (``(h, w)`` image ids, a 1D sequence, ``(T,)`` audio frames…)
in raster order, with the grid index as RoPE coordinates; an octree tokenizer's nodes go one per step
in breadth-first order (:class:`mmgen.octree.OctreeOrder`, ``by="token"``). Slot j holds the embedding of token j − 1
(slot 0 the start embedding) and predicts token j. A tokenizer whose 1D sequence decodes from any
prefix (FlexTok) lets ``num_tokens=k`` stop after k tokens. Positions holding several codebooks (RVQ
audio) are ordered by ``codebook_pattern``: ``"delay"`` (MusicGen, one step per frame with codebook
k delayed by k; the GPT's input tables are one id larger, for the empty id, the head's are not), ``"flatten"`` (one
step per codebook entry) or ``"parallel"`` (all codebooks of a frame in one step: a depth head or
independent per-codebook logits). ``rotary_coords="input"`` rotates each slot by the coordinates of the token
it holds and slot 0 by none (:class:`~mmgen.patterns.InputCoordinates`): LlamaGen's convention, for its weights.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Sequence

import torch

from mmgen.conditioning import Conditioner
from mmgen.gpt import GPT
from mmgen.heads import Head
from mmgen.octree import OctreeOrder
from mmgen.patterns import DelayCodebooks, FlattenCodebooks, InputCoordinates, Raster
from mmgen.programs import PreviousGroupInputs
from mmgen.protocol import TokenSpec, check_tokenizer
from mmgen.sampling import GuidanceSchedule, SamplingConfig
from mmgen.speculative import DraftSource
from mmgen.tokens import DiscreteContent

from .base import ARPipeline, SequencePlan, sampling_options

__all__ = ["NextTokenPipeline", "CODEBOOK_PATTERNS"]

CODEBOOK_PATTERNS = ("delay", "flatten", "parallel")
ROTARY_COORDS = ("target", "input")


class NextTokenPipeline(ARPipeline):
    """Next-token prediction on the shared GPT (KV cache, CFG with a doubled batch).

    ``pipe(class_labels=[3, 7], guidance_scale=3.0, generator=torch.Generator().manual_seed(0))``
    returns 2 samples; ``output_type="tokens"`` skips decoding. ``class_names`` (e.g. the shapes
    captions) let ``prompt`` select classes of a class-conditional model.
    """

    def __init__(self, gpt: GPT, tokenizer: Any, head: Head, conditioner: Conditioner,
                 class_names: list[str] | None = None, null_condition_trained: bool = False,
                 codebook_pattern: str = "delay", rotary_coords: str = "target") -> None:
        super().__init__()
        if codebook_pattern not in CODEBOOK_PATTERNS:
            raise ValueError(f"codebook_pattern must be one of {CODEBOOK_PATTERNS}, got {codebook_pattern!r}")
        if rotary_coords not in ROTARY_COORDS:
            raise ValueError(f"rotary_coords must be one of {ROTARY_COORDS}, got {rotary_coords!r}")
        self._register(gpt=gpt, tokenizer=tokenizer, head=head, conditioner=conditioner, class_names=class_names,
                       null_condition_trained=null_condition_trained, codebook_pattern=codebook_pattern,
                       rotary_coords=rotary_coords)

    @classmethod
    def plan(cls, tokenizer: Any, *, codebook_pattern: str = "delay", rotary_coords: str = "target",
             num_tokens: int | None = None) -> SequencePlan:
        plan = cls._plan(tokenizer, codebook_pattern=codebook_pattern, num_tokens=num_tokens)
        if rotary_coords == "target":
            return plan
        if isinstance(plan.pattern, OctreeOrder):
            raise ValueError("rotary_coords='input' is for fixed grids; an octree's nodes are placed by their own coordinates")
        return replace(plan, pattern=InputCoordinates(plan.pattern))

    @classmethod
    def _plan(cls, tokenizer: Any, *, codebook_pattern: str, num_tokens: int | None) -> SequencePlan:
        spec = check_tokenizer(tokenizer)
        if spec.is_pyramid:
            raise ValueError("NextTokenPipeline needs a tokenizer with one token grid; a multi-scale pyramid goes to NextScalePipeline")
        if spec.octree_depth:
            if num_tokens is not None:
                raise ValueError("num_tokens is for prefix-decodable 1D tokenizers; an octree ends where its tree does")
            order = OctreeOrder(spec.octree_depth, by="token")
            return SequencePlan(order, spec.content, input_content=order.input_content)
        shape = spec.shape if num_tokens is None else (_check_num_tokens(spec, num_tokens),)
        content = spec.content
        if not isinstance(content, DiscreteContent) or content.num_codebooks == 1:
            return SequencePlan(Raster(shape), content)
        if len(shape) != 1:
            raise ValueError(f"several codebooks per position need a 1D token grid (frames), got shape {shape}")
        sizes = content.codebook_sizes
        if codebook_pattern == "parallel":
            return SequencePlan(Raster(shape), content)
        if len(set(sizes)) != 1:
            raise ValueError(f"the {codebook_pattern} pattern needs codebooks of one size, got {sizes}")
        if codebook_pattern == "delay":
            return SequencePlan(DelayCodebooks(shape[0], len(sizes), empty_id=sizes[0]), content,
                                input_content=DiscreteContent(tuple(v + 1 for v in sizes)))
        return SequencePlan(FlattenCodebooks(shape[0], len(sizes)), DiscreteContent((sizes[0],)))

    def plan_options(self) -> dict[str, Any]:
        return {"codebook_pattern": self.config.codebook_pattern, "rotary_coords": self.config.get("rotary_coords", "target")}

    @property
    def max_tokens(self) -> int:
        """Positions of a full sample."""
        return self.tokenizer.token_spec().num_positions

    def input_rule(self) -> PreviousGroupInputs:
        return PreviousGroupInputs(gpt=self.gpt, head=self.head)

    # ---- call --------------------------------------------------------------------------------------
    @torch.inference_mode()
    def __call__(
        self,
        prompt: str | Sequence[str] | None = None,
        class_labels: int | Sequence[int] | torch.Tensor | None = None,
        num_samples_per_prompt: int = 1,
        guidance_scale: float | GuidanceSchedule | None = None,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        num_tokens: int | None = None,
        prefill: torch.Tensor | None = None,
        sampling: SamplingConfig | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str | None = None,
        return_dict: bool = True,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        decoding: str | DraftSource | None = None,
        draft_model: NextTokenPipeline | None = None,
        gated: bool = True,
    ) -> Any:
        """Generate token by token; one step (and one callback) per position.

        ``decoding`` (off by default: ``"plain"``): ``"lookahead"`` (n-gram retrieval), ``"recycling"``
        (Token Recycling), ``"jacobi"`` or ``"draft"`` (with ``draft_model=``, a smaller pipeline of the same
        tokens) confirm several tokens per forward, or a source from :mod:`mmgen.drafts`. The tokens are
        the same as plain decoding's for the same seeds, at any temperature; ``pipe.decoding_stats`` counts
        the forwards. ``gated`` (default): draft only while drafting gives more tokens per second
        than plain steps, as measured while decoding (:class:`~mmgen.draft_gate.DraftGate`, one per source,
        kept on the pipeline); False asks the source every step.
        ``num_tokens`` (prefix-decodable tokenizers only): stop after k ≤ N tokens and decode that prefix.
        ``prefill``: the first m tokens of every sample, known (``pipe.tokenize(x)[:, :m]``): generation
        continues them. ``guidance_scale`` is a number or a :class:`~mmgen.sampling.GuidanceSchedule`;
        ``sampling`` (a :class:`~mmgen.SamplingConfig`, e.g. with ``backend``) replaces the keywords.
        """
        options = {} if num_tokens is None else {"num_tokens": num_tokens}
        return self._run(prompt=prompt, class_labels=class_labels, num_samples_per_prompt=num_samples_per_prompt,
                         guidance_scale=guidance_scale,
                         sampling=sampling_options(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, sampling=sampling),
                         generator=generator, output_type=output_type, return_dict=return_dict,
                         callback_on_step_end=callback_on_step_end, prefill=prefill, options=options,
                         decoding=decoding, draft_model=draft_model, gated=gated)


def _check_num_tokens(spec: TokenSpec, num_tokens: int) -> int:
    if not spec.prefix_decodable:
        raise ValueError("num_tokens is for tokenizers whose 1D sequence decodes from any prefix; this grid is always generated whole")
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or not 1 <= num_tokens <= spec.num_positions:
        raise ValueError(f"num_tokens must be an int in 1..{spec.num_positions} (the tokenizer's N), got {num_tokens!r}")
    return num_tokens
