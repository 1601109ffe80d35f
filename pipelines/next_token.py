"""LlamaGen-style next-token generation: one token per step over a 2D id grid or a 1D flexible sequence.

With a :class:`~tokenizers_visual.VQImageTokenizer` the tokens are its ``h × w`` grid in raster order
(2D RoPE from the grid coordinates); with a :class:`~tokenizers_visual.FlexImageTokenizer` they are its
1D register tokens, and ``num_tokens=k`` stops after k of them (any prefix decodes, coarse to fine).
Slot j holds the embedding of token j − 1 (slot 0 the start embedding) and predicts token j.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from mmgen.gpt import GPT
from mmgen.sampling import GuidanceSchedule
from mmgen.tokens import DiscreteContent, TokenLayout
from tokenizers_visual import FlexImageTokenizer, VQImageTokenizer

from .base import ARImagePipeline, ARImagePipelineOutput

__all__ = ["NextTokenPipeline"]


class NextTokenPipeline(ARImagePipeline):
    """Next-token prediction on the shared GPT (KV cache, CFG with a doubled batch).

    ``pipe(class_labels=[3, 7], guidance_scale=3.0, generator=torch.Generator().manual_seed(0))``
    returns 2 images; ``output_type="tokens"`` skips decoding. ``class_names`` (e.g. the shapes
    captions) let ``prompt`` select classes of a class-conditional GPT.
    """

    model_cpu_offload_seq = "gpt->tokenizer"

    def __init__(self, gpt: GPT, tokenizer: VQImageTokenizer | FlexImageTokenizer,
                 class_names: list[str] | None = None, null_condition_trained: bool = False) -> None:
        super().__init__()
        self._check_common(gpt, class_names)
        if not isinstance(tokenizer, (VQImageTokenizer, FlexImageTokenizer)):
            raise TypeError(f"tokenizer must be a VQImageTokenizer or a FlexImageTokenizer, got {type(tokenizer).__name__}")
        if gpt.cfg.codebook_sizes != (tokenizer.codebook_size,):
            raise ValueError(f"the GPT's vocabulary {gpt.cfg.codebook_sizes} does not match the tokenizer's codebook of {tokenizer.codebook_size}")
        rank = 1 if isinstance(tokenizer, FlexImageTokenizer) else 2
        if gpt.cfg.coord_rank != rank:
            raise ValueError(f"{type(tokenizer).__name__} tokens have coordinate rank {rank}; the GPT has coord_rank={gpt.cfg.coord_rank}")
        self.register_modules(gpt=gpt, tokenizer=tokenizer)
        self.register_to_config(class_names=class_names, null_condition_trained=null_condition_trained)

    @property
    def is_flexible(self) -> bool:
        return isinstance(self.tokenizer, FlexImageTokenizer)

    @property
    def max_tokens(self) -> int:
        return self.tokenizer.max_tokens if self.is_flexible else self.tokenizer.layout().seq_len

    def body_layout(self, *, num_tokens: int | None = None) -> TokenLayout:
        content = DiscreteContent((self.tokenizer.codebook_size,))
        if self.is_flexible:
            return TokenLayout.sequence(self.max_tokens if num_tokens is None else num_tokens, content=content)
        if num_tokens is not None:
            raise ValueError("num_tokens is for flexible-length tokenizers; a VQ grid is always generated whole")
        return TokenLayout.grid(self.tokenizer.grid_shape(), content=content)

    def _check_num_tokens(self, num_tokens: int | None) -> None:
        if num_tokens is None or not self.is_flexible:
            return
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or not 1 <= num_tokens <= self.max_tokens:
            raise ValueError(f"num_tokens must be an int in 1..{self.max_tokens} (the tokenizer's N), got {num_tokens!r}")

    # ---- generation hooks ------------------------------------------------------------------------
    def group_inputs(self, group: int, state: list[Any], batch_size: int) -> torch.Tensor:
        if group == 0:
            return self.gpt.start_inputs(batch_size, 1)
        return self.gpt.embed_tokens(state[-1])

    def draw_group(self, group: int, hidden_RnD: torch.Tensor, *, state: list[Any], guidance: float,
                   seeds_B: torch.Tensor, slot_offset: int, options: dict[str, Any]) -> torch.Tensor:
        return self.sample_ids(self.gpt.logits(hidden_RnD), guidance=guidance, seeds_B=seeds_B,
                               slot_offset=slot_offset, options=options)

    def finish(self, state: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        ids_BL = torch.cat(state, dim=1)
        if self.is_flexible:
            return ids_BL, self.tokenizer.decode(ids_BL)
        ids_Bhw = ids_BL.view(ids_BL.shape[0], *self.tokenizer.grid_shape())
        return ids_Bhw, self.tokenizer.decode(ids_Bhw)

    # ---- training ----------------------------------------------------------------------------------
    @torch.no_grad()
    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [-1, 1] → the ids the GPT learns: ``[B, L]`` in generation order."""
        return self.tokenizer.encode(images).flatten(1)

    def teacher_inputs(self, tokens: torch.Tensor, *, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        ids_BL = tokens.flatten(1)
        if ids_BL.shape[1] != self.max_tokens:
            raise ValueError(f"tokens must hold {self.max_tokens} ids per image, got {ids_BL.shape[1]}")
        start = self.gpt.start_inputs(ids_BL.shape[0], 1)
        return torch.cat([start, self.gpt.embed_tokens(ids_BL[:, :-1])], dim=1), ids_BL

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
        num_tokens: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
    ) -> ARImagePipelineOutput | tuple:
        """Generate images token by token; one step (and one callback) per token.

        ``num_tokens`` (Flex tokenizers only): stop after k ≤ N tokens and decode that prefix.
        ``guidance_scale`` is a number or a :class:`~mmgen.sampling.GuidanceSchedule` over the steps.
        """
        self._check_num_tokens(num_tokens)
        return self._run(prompt=prompt, class_labels=class_labels, num_samples_per_prompt=num_samples_per_prompt,
                         guidance_scale=guidance_scale, generator=generator, output_type=output_type,
                         return_dict=return_dict, callback_on_step_end=callback_on_step_end,
                         layout_kwargs={"num_tokens": num_tokens},
                         options={"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p})
