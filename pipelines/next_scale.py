"""VAR-style next-scale generation: every token of a scale in one GPT step, coarse to fine.

The tokens are a multi-scale tokenizer's pyramid (one group per scale, ``(scale, *centre)`` RoPE
coordinates on the finest grid: 1D for audio pyramids, 2D for images). The slots of scale 0 hold the
GPT's start embedding; the slots of scale k > 0 hold what the tokenizer computes from scales < k
(its :class:`mmgen.protocol.ScaleContext`; VAR: the running reconstruction area-resampled to scale k),
projected by ``gpt.embed_inputs``. Generation takes one GPT forward per scale and training one forward
over the whole pyramid. An octree tokenizer's levels are its scales (:class:`mmgen.octree.OctreeOrder`,
``by="level"``): every node of a level in one step, the nodes being the children of the occupied cells
drawn at the level before.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from mmgen.conditioning import Conditioner
from mmgen.gpt import GPT
from mmgen.heads import Head
from mmgen.octree import OctreeOrder
from mmgen.patterns import Scales
from mmgen.programs import ScaleContextInputs
from mmgen.protocol import check_tokenizer, has_scale_context
from mmgen.sampling import GuidanceSchedule, SamplingConfig

from .base import ARPipeline, SequencePlan, sampling_options

__all__ = ["NextScalePipeline"]


class NextScalePipeline(ARPipeline):
    """Next-scale prediction (VAR) on the shared GPT (KV cache, CFG with a doubled batch).

    ``pipe(class_labels=[3, 7], guidance_scale=GuidanceSchedule.from_var(cfg=1.5),
    generator=torch.Generator().manual_seed(0))`` returns 2 samples after one GPT step per scale.
    """

    def __init__(self, gpt: GPT, tokenizer: Any, head: Head, conditioner: Conditioner,
                 class_names: list[str] | None = None, null_condition_trained: bool = False) -> None:
        super().__init__()
        self._register(gpt=gpt, tokenizer=tokenizer, head=head, conditioner=conditioner, class_names=class_names,
                       null_condition_trained=null_condition_trained)

    @classmethod
    def plan(cls, tokenizer: Any) -> SequencePlan:
        spec = check_tokenizer(tokenizer)
        if spec.octree_depth:  # the levels of an octree are its scales; a level's nodes follow from the one before
            order = OctreeOrder(spec.octree_depth, by="level")
            return SequencePlan(order, spec.content, input_content=order.input_content)
        if not spec.is_pyramid or not has_scale_context(tokenizer):
            raise TypeError(f"NextScalePipeline needs a multi-scale tokenizer with a ScaleContext (a token pyramid and "
                            f"next-scale inputs); {type(tokenizer).__name__} lacks them")
        pattern = Scales(tuple(s[0] for s in spec.scales), rank=len(spec.scales[0]))
        return SequencePlan(pattern, spec.content, context_dim=tokenizer.context_dim)

    @property
    def num_tokens(self) -> int:
        """L = Σ positions over the scales."""
        return self.tokenizer.token_spec().num_positions

    def input_rule(self) -> ScaleContextInputs:
        return ScaleContextInputs(gpt=self.gpt, tokenizer=self.tokenizer)

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
        sampling: SamplingConfig | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str | None = None,
        return_dict: bool = True,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
    ) -> Any:
        """Generate scale by scale; one GPT step (and one callback) per scale.

        ``guidance_scale`` is a number (the same at every scale) or a :class:`~mmgen.sampling.GuidanceSchedule`;
        ``GuidanceSchedule.from_var(cfg=c)`` is VAR's ramp, from no guidance at the first scale to ``1 + c``
        at the last. The callback gets ``{"tokens": ids of the scale}``; returned ids replace them.
        """
        return self._run(prompt=prompt, class_labels=class_labels, num_samples_per_prompt=num_samples_per_prompt,
                         guidance_scale=guidance_scale,
                         sampling=sampling_options(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, sampling=sampling),
                         generator=generator, output_type=output_type, return_dict=return_dict,
                         callback_on_step_end=callback_on_step_end)
