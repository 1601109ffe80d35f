"""VAR-style next-scale generation: every token of a scale in one GPT step, coarse to fine.

The tokens are a :class:`~tokenizers_visual.MultiScaleVQTokenizer`'s pyramid of ``pn_k × pn_k`` id
maps (one group per scale, ``(scale, y, x)`` RoPE coordinates). The slots of scale 0 hold the GPT's
start embedding; the slots of scale k > 0 hold the running reconstruction ``f_hat`` of scales < k,
area-downsampled to ``pn_k × pn_k`` and projected by ``gpt.embed_inputs``. Each scale's slots
predict that scale's ids, so generation takes one GPT forward per scale and training one forward
over the whole pyramid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mmgen.gpt import GPT
from mmgen.sampling import GuidanceSchedule
from mmgen.tokens import TokenLayout
from tokenizers_visual import MultiScaleVQTokenizer

from .base import ARImagePipeline, ARImagePipelineOutput

__all__ = ["NextScalePipeline", "ScaleDraw"]


@dataclass
class ScaleDraw:
    """What one scale's step leaves behind for the next ones.

    ``ids_Bn``: the scale's ids ``[B, pn²]`` (row-major). ``f_hat_BChw``: the reconstruction after
    this scale. ``next_inputs_BnC``: the next scale's input ``[B, pn_next², codebook_dim]``, None
    after the last scale.
    """

    ids_Bn: torch.Tensor
    f_hat_BChw: torch.Tensor
    next_inputs_BnC: torch.Tensor | None


class NextScalePipeline(ARImagePipeline):
    """Next-scale prediction (VAR) on the shared GPT (KV cache, CFG with a doubled batch).

    ``pipe(class_labels=[3, 7], guidance_scale=GuidanceSchedule.from_var(cfg=1.5),
    generator=torch.Generator().manual_seed(0))`` returns 2 images after one GPT step per scale;
    ``output_type="tokens"`` skips decoding. ``class_names`` let ``prompt`` select classes of a
    class-conditional GPT.
    """

    model_cpu_offload_seq = "gpt->tokenizer"

    def __init__(self, gpt: GPT, tokenizer: MultiScaleVQTokenizer,
                 class_names: list[str] | None = None, null_condition_trained: bool = False) -> None:
        super().__init__()
        self._check_common(gpt, class_names)
        _check_tokenizer_fits(gpt, tokenizer)
        self.register_modules(gpt=gpt, tokenizer=tokenizer)
        self.register_to_config(class_names=class_names, null_condition_trained=null_condition_trained)

    @property
    def num_tokens(self) -> int:
        """L = Σ pn², the ids per image."""
        return self.tokenizer.num_tokens

    def body_layout(self) -> TokenLayout:
        return self.tokenizer.layout()

    # ---- generation hooks ------------------------------------------------------------------------
    def group_inputs(self, group: int, state: list[ScaleDraw], batch_size: int) -> torch.Tensor:
        if group == 0:
            first = self.tokenizer.patch_nums[0]
            return self.gpt.start_inputs(batch_size, first * first)
        return self.gpt.embed_inputs(state[-1].next_inputs_BnC.to(self.gpt.dtype))

    def draw_group(self, group: int, hidden_RnD: torch.Tensor, *, state: list[ScaleDraw], guidance: float,
                   seeds_B: torch.Tensor, slot_offset: int, options: dict[str, Any]) -> ScaleDraw:
        ids_Bn = self.sample_ids(self.gpt.logits(hidden_RnD), guidance=guidance, seeds_B=seeds_B,
                                 slot_offset=slot_offset, options=options)
        codes_BChw = self.tokenizer.ids_to_codes(ids_Bn, scale_index=group)
        f_hat, next_inputs = self.tokenizer.next_scale_input(scale_index=group, f_hat=state[-1].f_hat_BChw if state else None,
                                                             codes_BChw=codes_BChw)
        return ScaleDraw(ids_Bn, f_hat, next_inputs)

    def finish(self, state: list[ScaleDraw]) -> tuple[torch.Tensor, torch.Tensor]:
        ids_BL = self.tokenizer.flatten_ids([draw.ids_Bn for draw in state])
        return ids_BL, self.tokenizer.decode_f_hat(state[-1].f_hat_BChw)

    # ---- training ----------------------------------------------------------------------------------
    @torch.no_grad()
    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [-1, 1] → the ids the GPT learns: ``[B, L]``, scale by scale."""
        return self.tokenizer.encode_flat(images)

    def teacher_inputs(self, tokens: torch.Tensor, *, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Start embeddings for scale 0, then the projected ``f_hat`` of the true coarser scales (VAR's teacher forcing)."""
        ids_BL = self._check_flat_ids(tokens)
        first = self.tokenizer.patch_nums[0]
        start = self.gpt.start_inputs(ids_BL.shape[0], first * first)
        later = self.gpt.embed_inputs(self.tokenizer.ids_to_next_scale_inputs(ids_BL).to(self.gpt.dtype))
        return torch.cat([start, later], dim=1), ids_BL

    def _check_flat_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"tokens must be a [B, L] tensor of ids from tokenize(), got {type(tokens).__name__}")
        if tokens.dim() != 2 or tokens.shape[1] != self.num_tokens:
            raise ValueError(
                f"tokens must have shape [B, {self.num_tokens}] (L = Σ pn² for patch_nums {self.tokenizer.patch_nums}), "
                f"got {tuple(tokens.shape)}"
            )
        return tokens.long()

    def body_loss(self, hidden_BLD: torch.Tensor, targets: torch.Tensor, *, generator: torch.Generator | None) -> tuple[torch.Tensor, dict[str, float]]:
        return self.categorical_loss(hidden_BLD, targets)

    # ---- call --------------------------------------------------------------------------------------
    @torch.inference_mode()
    def __call__(
        self,
        prompt: str | Sequence[str] | None = None,
        class_labels: int | Sequence[int] | torch.Tensor | None = None,
        num_samples_per_prompt: int = 1,
        guidance_scale: float | GuidanceSchedule = 1.0,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
    ) -> ARImagePipelineOutput | tuple:
        """Generate images scale by scale; one GPT step (and one callback) per scale.

        ``guidance_scale`` is a number (the same scale at every scale) or a
        :class:`~mmgen.sampling.GuidanceSchedule`; ``GuidanceSchedule.from_var(cfg=c)`` is VAR's ramp,
        guidance growing linearly from none at the first scale to ``1 + c`` at the last.
        The callback gets ``{"tokens": ScaleDraw}`` (the scale's ids and the reconstruction so far).
        ``tokens`` of the output are the flat ids ``[B, L]`` in the order of ``tokenizer.flatten_ids``.
        """
        return self._run(prompt=prompt, class_labels=class_labels, num_samples_per_prompt=num_samples_per_prompt,
                         guidance_scale=guidance_scale, generator=generator, output_type=output_type,
                         return_dict=return_dict, callback_on_step_end=callback_on_step_end,
                         layout_kwargs={},
                         options={"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p})


def _check_tokenizer_fits(gpt: GPT, tokenizer: MultiScaleVQTokenizer) -> None:
    """The GPT must predict the tokenizer's codebook, on (scale, y, x) coordinates, from codebook-space inputs."""
    if not isinstance(tokenizer, MultiScaleVQTokenizer):
        raise TypeError(f"tokenizer must be a MultiScaleVQTokenizer, got {type(tokenizer).__name__}")
    if gpt.cfg.codebook_sizes != (tokenizer.codebook_size,):
        raise ValueError(
            f"the GPT's vocabulary {gpt.cfg.codebook_sizes} does not match the tokenizer's codebook of {tokenizer.codebook_size}"
        )
    if gpt.cfg.coord_rank != 3:
        raise ValueError(f"next-scale tokens have (scale, y, x) coordinates, so the GPT needs coord_rank=3, got {gpt.cfg.coord_rank}")
    if gpt.cfg.input_dim != tokenizer.cfg.codebook_dim:
        raise ValueError(
            f"the GPT's input_dim={gpt.cfg.input_dim} must equal the tokenizer's codebook_dim={tokenizer.cfg.codebook_dim}: "
            "the next-scale inputs are codebook-space features"
        )
