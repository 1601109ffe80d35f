"""xAR-style next-X generation: the AR unit ("entity") is a token, a cell, a strided subsample, a scale or the whole image.

The body is split into groups, one entity each, generated in order; the slots of group k hold the
previous entity mapped onto group k's positions (group 0 holds the GPT's start embedding):

- ``"token"``: one latent position per group, raster order;
- ``"cell"``: ``cell_size × cell_size`` blocks in raster order (:meth:`TokenLayout.cells`);
- ``"subsample"``: group (py, px) holds the positions with ``(y mod s, x mod s) = (py, px)``, so
  s² strided sub-grids, s = ``cell_size``;
- ``"scale"`` (continuous only): entity k is the latent grid area-downsampled to ``patch_nums[k]``
  and group k's input is entity k − 1 upsampled (bilinear) to ``patch_nums[k]``;
- ``"image"``: one group, everything at once.

For token / cell / subsample / image all entities have the same number of positions, and position i
of entity k − 1 feeds position i of entity k.

With a :class:`~tokenizers_visual.KLImageTokenizer` the tokens are continuous latents, normalised by the
:class:`~mmgen.flow_head.FlowHead`'s statistics, and each group is drawn by the head's Euler sampler
conditioned on the group's hidden states. Training uses xAR's noisy-context learning: every entity gets
its own noise level t ~ U(0, 1) per sample, group k sees entity k − 1 noised to t plus the embedding of
t, and learns to flow to the clean entity k. Inference feeds clean entities (t = 1). With a
:class:`~tokenizers_visual.VQImageTokenizer` the same loop draws ids from the categorical head, all ids of
a group in parallel, and training feeds the clean previous entity (plain teacher forcing).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from mmgen.flow_head import FlowHead
from mmgen.gpt import GPT
from mmgen.sampling import GuidanceSchedule
from mmgen.tokens import ContinuousContent, DiscreteContent, TokenContent, TokenLayout
from tokenizers_visual import KLImageTokenizer, VQImageTokenizer

from .base import ARImagePipeline, ARImagePipelineOutput

__all__ = ["NextXPipeline", "ENTITIES"]

ENTITIES = ("token", "cell", "subsample", "scale", "image")
UPSAMPLE_MODE = "bilinear"


@dataclass(frozen=True)
class EntityPlan:
    """The body layout and how its groups map onto the latent grid.

    ``order_L``: flat grid index ``y * w + x`` of each body position (None for "scale").
    ``sizes``: positions per group. ``patch_nums``: side of each scale (None unless "scale").
    """

    layout: TokenLayout
    sizes: tuple[int, ...]
    order_L: torch.Tensor | None
    patch_nums: tuple[int, ...] | None

    @property
    def num_groups(self) -> int:
        return len(self.sizes)


class NextXPipeline(ARImagePipeline):
    """Next-X prediction on the shared GPT, continuous (KL latents + flow head) or discrete (VQ ids).

    ``pipe(class_labels=[3, 7], guidance_scale=3.0, generator=torch.Generator().manual_seed(0))``
    returns 2 images after one GPT step per entity; ``output_type="tokens"`` skips decoding.
    """

    model_cpu_offload_seq = "gpt->head->tokenizer"
    _optional_components = ["head"]

    def __init__(self, gpt: GPT, tokenizer: KLImageTokenizer | VQImageTokenizer, head: FlowHead | None = None,
                 entity: str = "cell", cell_size: int = 2, patch_nums: list[int] | None = None,
                 num_flow_steps: int = 16, class_names: list[str] | None = None,
                 null_condition_trained: bool = False) -> None:
        super().__init__()
        self._check_common(gpt, class_names)
        _check_components(gpt, tokenizer, head)
        _check_positive_int("num_flow_steps", num_flow_steps)
        grid = tokenizer.grid_shape()
        patch_nums = _check_entity(entity, cell_size=cell_size, patch_nums=patch_nums, grid=grid,
                                   continuous=head is not None)
        rank = 3 if entity == "scale" else 2
        if gpt.cfg.coord_rank != rank:
            raise ValueError(f"entity={entity!r} positions have coordinate rank {rank}; the GPT has coord_rank={gpt.cfg.coord_rank}")
        self.register_modules(gpt=gpt, tokenizer=tokenizer, head=head)
        self.register_to_config(entity=entity, cell_size=cell_size, patch_nums=patch_nums, num_flow_steps=num_flow_steps,
                                class_names=class_names, null_condition_trained=null_condition_trained)
        self._plan = build_plan(entity, grid=grid, cell_size=cell_size, patch_nums=patch_nums, content=self._content())
        _check_fits(gpt, self._plan.layout.seq_len)

    @property
    def is_continuous(self) -> bool:
        return isinstance(self.tokenizer, KLImageTokenizer)

    @property
    def num_groups(self) -> int:
        """Generation steps (GPT forwards) per image: the number of entities."""
        return self._plan.num_groups

    def _content(self) -> TokenContent:
        if self.is_continuous:
            return ContinuousContent(self.tokenizer.latent_dim)
        return DiscreteContent((self.tokenizer.codebook_size,))

    def body_layout(self) -> TokenLayout:
        return self._plan.layout

    # ---- entities ----------------------------------------------------------------------------
    def entities(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Split tokens from :meth:`tokenize` into the AR entities, in group order.

        Entity k is ``[B, n_k, C]`` latents (continuous) or ``[B, n_k]`` ids, positions in body order.
        """
        self._check_tokens(tokens)
        plan = self._plan
        if plan.patch_nums is not None:
            return [_grid_to_rows(F.interpolate(tokens, size=(pn, pn), mode="area")) for pn in plan.patch_nums]
        order = plan.order_L.to(tokens.device)
        rows = tokens.flatten(1)[:, order] if tokens.dim() == 3 else _grid_to_rows(tokens)[:, order]
        return list(rows.split(plan.sizes, dim=1))

    def _context(self, group: int, previous: torch.Tensor) -> torch.Tensor:
        """Entity ``group − 1`` placed on group ``group``'s positions (upsampled for scales)."""
        if self._plan.patch_nums is None:
            return previous
        side = self._plan.patch_nums[group]
        grid = _rows_to_grid(previous, self._plan.patch_nums[group - 1])
        return _grid_to_rows(F.interpolate(grid, size=(side, side), mode=UPSAMPLE_MODE, align_corners=False))

    def _continuous_inputs(self, group: int, previous_BnC: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
        """GPT inputs of ``group`` from the (possibly noised) previous entity and its noise level ``t``."""
        x = self.gpt.embed_inputs(self._context(group, previous_BnC).to(self.gpt.dtype))
        return x + self.head.context_time(t_B).to(x.dtype).unsqueeze(1)

    def assemble(self, state: list[torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`entities`: entities in group order → latents ``[B, C, h, w]`` or ids ``[B, h, w]``.

        A scale pyramid assembles to its last scale, the full latent grid.
        """
        h, w = self.tokenizer.grid_shape()
        if self._plan.patch_nums is not None:
            return _rows_to_grid(state[-1], h)
        rows = torch.cat(state, dim=1)
        order = self._plan.order_L.to(rows.device)
        out = torch.empty_like(rows)
        out[:, order] = rows
        return out.view(rows.shape[0], h, w) if rows.dim() == 2 else _rows_to_grid(out, h)

    # ---- generation hooks ------------------------------------------------------------------------
    def group_inputs(self, group: int, state: list[Any], batch_size: int) -> torch.Tensor:
        if group == 0:
            return self.gpt.start_inputs(batch_size, self._plan.sizes[0])
        if not self.is_continuous:
            return self.gpt.embed_tokens(state[group - 1])
        clean_B = torch.ones(batch_size, device=self.device)
        return self._continuous_inputs(group, state[group - 1], clean_B)

    def draw_group(self, group: int, hidden_RnD: torch.Tensor, *, state: list[Any], guidance: float,
                   seeds_B: torch.Tensor, slot_offset: int, options: dict[str, Any]) -> torch.Tensor:
        if not self.is_continuous:
            return self.sample_ids(self.gpt.logits(hidden_RnD), guidance=guidance, seeds_B=seeds_B,
                                   slot_offset=slot_offset, options=options)
        return self._draw_latents(hidden_RnD, guidance=guidance, seeds_B=seeds_B, slot_offset=slot_offset, options=options)

    def _draw_latents(self, hidden_RnD: torch.Tensor, *, guidance: float, seeds_B: torch.Tensor, slot_offset: int,
                      options: dict[str, Any]) -> torch.Tensor:
        """Euler-sample one group's latents ``[B, n, C]``; the uncond rows are used only where guidance != 1."""
        B, n, D = seeds_B.shape[0], hidden_RnD.shape[1], hidden_RnD.shape[2]
        cond, uncond = hidden_RnD.chunk(2) if hidden_RnD.shape[0] == 2 * B else (hidden_RnD, None)
        noise = group_noise(seeds_B, slot_offset, n, self.head.latent_dim).to(hidden_RnD.device) * options["temperature"]
        latents = self.head.sample(
            cond.reshape(B * n, D),
            num_steps=options["num_flow_steps"],
            noise_NC=noise,
            guidance=guidance,
            z_uncond_ND=None if uncond is None or guidance == 1.0 else uncond.reshape(B * n, D),
        )
        return latents.view(B, n, -1)

    def finish(self, state: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.assemble(state)
        if self.is_continuous:
            tokens = self.head.denormalize(tokens).to(self.tokenizer.dtype)
        return tokens, self.tokenizer.decode(tokens)

    # ---- training ----------------------------------------------------------------------------------
    @torch.no_grad()
    def set_latent_statistics(self, images: torch.Tensor) -> None:
        """Fit the head's per-channel latent mean / std on ``images [B, 3, H, W]`` (before training the GPT)."""
        self._require_continuous("set_latent_statistics")
        self.head.set_latent_statistics(self.tokenizer.encode(images))

    @torch.no_grad()
    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [-1, 1] → normalised latents ``[B, C, h, w]`` (continuous) or ids ``[B, h, w]``."""
        if self.is_continuous:
            return self.head.normalize(self.tokenizer.encode(images))
        return self.tokenizer.encode(images)

    def teacher_inputs(self, tokens: torch.Tensor, *, generator: torch.Generator | None = None,
                       noisy_context: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Body inputs ``[B, L, dim]`` and targets (``[B, L, C]`` latents or ``[B, L]`` ids) in body order.

        Continuous: each context entity is noised to its own t ~ U(0, 1) per sample (drawn from
        ``generator``, else torch's global RNG); ``noisy_context=False`` uses t = 1, the inputs that
        generation builds. Discrete: the clean previous entity (teacher forcing).
        """
        entities = self.entities(tokens)
        B = tokens.shape[0]
        inputs = [self.gpt.start_inputs(B, self._plan.sizes[0])]
        if self.is_continuous:
            inputs += self._noisy_context_inputs(entities, generator=generator, noisy=noisy_context)
        else:
            inputs += [self.gpt.embed_tokens(ids) for ids in entities[:-1]]
        return torch.cat(inputs, dim=1), torch.cat(entities, dim=1)

    def _noisy_context_inputs(self, entities: list[torch.Tensor], *, generator: torch.Generator | None,
                              noisy: bool) -> list[torch.Tensor]:
        B, K = entities[0].shape[0], len(entities)
        device = entities[0].device
        if not noisy:
            t_BK = torch.ones(B, K - 1, device=device)
        else:
            t_BK = _draw(torch.rand, (B, K - 1), generator, device)
        inputs = []
        for k in range(1, K):
            previous = entities[k - 1]
            t = t_BK[:, k - 1].view(B, 1, 1)
            if noisy:
                eps = _draw(torch.randn, tuple(previous.shape), generator, device)
                previous = t * previous + (1 - t) * eps
            inputs.append(self._continuous_inputs(k, previous, t_BK[:, k - 1]))
        return inputs

    def body_loss(self, hidden_BLD: torch.Tensor, targets: torch.Tensor, *,
                  generator: torch.Generator | None) -> tuple[torch.Tensor, dict[str, float]]:
        if self.is_continuous:
            loss = self.head.flow_loss(targets.flatten(0, 1), hidden_BLD.flatten(0, 1), generator=generator)
            return loss, {"flow": loss.item()}
        return self.categorical_loss(hidden_BLD, targets)

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        h, w = self.tokenizer.grid_shape()
        if self.is_continuous:
            C = self.tokenizer.latent_dim
            if not _is_tensor_of(tokens, floating=True, shape=(C, h, w)):
                got = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
                raise ValueError(f"tokens must be normalised latents [B, {C}, {h}, {w}] from tokenize(), got {got}")
        elif not _is_tensor_of(tokens, floating=False, shape=(h, w)):
            got = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be ids [B, {h}, {w}] from tokenize(), got {got}")

    def _require_continuous(self, what: str) -> None:
        if not self.is_continuous:
            raise ValueError(f"{what} is for continuous tokenizers (KLImageTokenizer with a FlowHead); this pipeline is discrete")

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
        num_flow_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
    ) -> ARImagePipelineOutput | tuple:
        """Generate images entity by entity; one GPT step (and one callback) per entity.

        Continuous: ``num_flow_steps`` Euler steps per entity (default: the pipeline's config) and
        ``temperature`` scales the initial noise. Discrete: ``temperature`` / ``top_k`` / ``top_p`` /
        ``min_p`` filter each id's distribution. ``guidance_scale`` is a number or a
        :class:`~mmgen.sampling.GuidanceSchedule` over the entities.
        """
        steps = self.config.num_flow_steps if num_flow_steps is None else num_flow_steps
        _check_positive_int("num_flow_steps", steps)
        if self.is_continuous and not float(temperature) >= 0:
            raise ValueError(f"temperature must be >= 0 (it scales the flow's initial noise), got {temperature!r}")
        return self._run(prompt=prompt, class_labels=class_labels, num_samples_per_prompt=num_samples_per_prompt,
                         guidance_scale=guidance_scale, generator=generator, output_type=output_type,
                         return_dict=return_dict, callback_on_step_end=callback_on_step_end, layout_kwargs={},
                         options={"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p,
                                  "num_flow_steps": steps})


# ---- layouts -----------------------------------------------------------------------------------------
def build_plan(entity: str, *, grid: tuple[int, int], cell_size: int, patch_nums: Sequence[int] | None,
               content: TokenContent) -> EntityPlan:
    """The body layout of ``entity`` over a latent ``grid`` and its group sizes / grid order."""
    if entity == "scale":
        layout = TokenLayout.scales(patch_nums, content=content)
        return EntityPlan(layout, tuple(pn * pn for pn in patch_nums), None, tuple(patch_nums))
    if entity == "token":
        layout = TokenLayout.grid(grid, content=content)
    elif entity == "cell":
        layout = TokenLayout.cells(grid, cell_size, content=content)
    elif entity == "subsample":
        layout = subsample_layout(grid, cell_size, content=content)
    else:
        coords = TokenLayout.grid(grid).coords[0]
        layout = TokenLayout.from_coords(coords, torch.zeros(coords.shape[0], dtype=torch.long), content=content)
    yx_L2 = layout.coords[0].long()
    groups = layout.groups[0].tolist()
    sizes = tuple(groups.count(g) for g in range(max(groups) + 1))
    return EntityPlan(layout, sizes, yx_L2[:, 0] * grid[1] + yx_L2[:, 1], None)


def subsample_layout(shape: tuple[int, int], stride: int, *, content: TokenContent | None = None) -> TokenLayout:
    """Strided sub-grids as groups: group ``py * s + px`` holds positions ``(py + s·i, px + s·j)`` in raster order."""
    h, w = shape
    coords, groups = [], []
    for k, (py, px) in enumerate(product(range(stride), range(stride))):
        yy, xx = torch.meshgrid(torch.arange(py, h, stride), torch.arange(px, w, stride), indexing="ij")
        coords.append(torch.stack([yy, xx], dim=-1).reshape(-1, 2))
        groups.append(torch.full((yy.numel(),), k, dtype=torch.long))
    return TokenLayout.from_coords(torch.cat(coords).float(), torch.cat(groups), content=content)


def group_noise(seeds_B: torch.Tensor, slot_offset: int, n: int, channels: int) -> torch.Tensor:
    """Initial flow noise ``[B * n, channels]`` (CPU): sample b's from a generator seeded ``seeds_B[b] + slot_offset``."""
    rows = [torch.randn(n, channels, generator=torch.Generator().manual_seed(int(seed) + slot_offset))
            for seed in seeds_B.tolist()]
    return torch.cat(rows)


# ---- helpers -----------------------------------------------------------------------------------------
def _grid_to_rows(x_BChw: torch.Tensor) -> torch.Tensor:
    return x_BChw.flatten(2).transpose(1, 2)


def _rows_to_grid(x_BLC: torch.Tensor, side: int) -> torch.Tensor:
    B, L, C = x_BLC.shape
    return x_BLC.transpose(1, 2).reshape(B, C, side, L // side)


def _draw(fn: Callable[..., torch.Tensor], shape: tuple[int, ...], generator: torch.Generator | None,
          device: torch.device) -> torch.Tensor:
    on = device if generator is None else generator.device
    return fn(shape, generator=generator, device=on).to(device)


def _is_tensor_of(tokens: object, *, floating: bool, shape: tuple[int, ...]) -> bool:
    """Whether ``tokens`` is a ``[B, *shape]`` tensor of float (latents) or integer (ids) dtype."""
    return (isinstance(tokens, torch.Tensor) and tokens.is_floating_point() == floating
            and tuple(tokens.shape[1:]) == shape)


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_components(gpt: GPT, tokenizer: Any, head: Any) -> None:
    """Tokenizer kind, head presence and every size the three must agree on."""
    if isinstance(tokenizer, KLImageTokenizer):
        if head is None:
            raise ValueError("a KLImageTokenizer (continuous latents) needs a FlowHead: pass head=FlowHead(...)")
        if not isinstance(head, FlowHead):
            raise TypeError(f"head must be an mmgen.FlowHead, got {type(head).__name__}")
        C = tokenizer.latent_dim
        if head.latent_dim != C:
            raise ValueError(f"head.latent_dim={head.latent_dim} does not match the tokenizer's latent_dim={C}")
        if head.cond_dim != gpt.cfg.dim:
            raise ValueError(f"head.cond_dim={head.cond_dim} does not match the GPT's dim={gpt.cfg.dim}")
        if gpt.cfg.input_dim != C:
            raise ValueError(f"the GPT's input_dim={gpt.cfg.input_dim} must equal the tokenizer's latent_dim={C} (continuous inputs)")
        return
    if not isinstance(tokenizer, VQImageTokenizer):
        raise TypeError(f"tokenizer must be a KLImageTokenizer or a VQImageTokenizer, got {type(tokenizer).__name__}")
    if head is not None:
        raise ValueError("head is for continuous tokenizers; a VQImageTokenizer's ids come from the GPT's categorical head, pass head=None")
    if gpt.cfg.codebook_sizes != (tokenizer.codebook_size,):
        raise ValueError(f"the GPT's vocabulary {gpt.cfg.codebook_sizes} does not match "
                         f"the tokenizer's codebook of {tokenizer.codebook_size}")


def _check_entity(entity: str, *, cell_size: int, patch_nums: Sequence[int] | None, grid: tuple[int, int],
                  continuous: bool) -> list[int] | None:
    """Validate the entity options against the latent grid; return the patch_nums to use (scale only)."""
    if entity not in ENTITIES:
        raise ValueError(f"entity must be one of {ENTITIES}, got {entity!r}")
    _check_positive_int("cell_size", cell_size)
    h, w = grid
    if entity in ("cell", "subsample") and (h % cell_size or w % cell_size):
        raise ValueError(f"cell_size={cell_size} must divide the latent grid {h}x{w} (entity={entity!r})")
    if entity != "scale":
        if patch_nums is not None:
            raise ValueError(f"patch_nums is for entity='scale', got it with entity={entity!r}")
        return None
    if not continuous:
        raise ValueError("entity='scale' needs continuous latents (KLImageTokenizer + FlowHead); a VQ grid has no coarse scales")
    if h != w:
        raise ValueError(f"entity='scale' needs a square latent grid, got {h}x{w}")
    return _check_patch_nums(default_patch_nums(h) if patch_nums is None else list(patch_nums), h)


def default_patch_nums(side: int) -> list[int]:
    """Sides halving from the latent grid down to 1, coarse to fine (e.g. 16 → [1, 2, 4, 8, 16])."""
    sides = [side]
    while sides[-1] > 1:
        sides.append(sides[-1] // 2)
    return sides[::-1]


def _check_patch_nums(patch_nums: list[int], side: int) -> list[int]:
    if not patch_nums:
        raise ValueError("patch_nums must name at least one scale")
    for pn in patch_nums:
        _check_positive_int("patch_nums entries", pn)
    if any(b <= a for a, b in zip(patch_nums[:-1], patch_nums[1:], strict=True)):
        raise ValueError(f"patch_nums must be strictly increasing, got {patch_nums}")
    if patch_nums[-1] != side:
        raise ValueError(f"patch_nums must end at the latent grid size {side}, got {patch_nums} (last {patch_nums[-1]})")
    return patch_nums


def _check_fits(gpt: GPT, body_len: int) -> None:
    prefix = max(gpt.cfg.text_max_len, 1 if gpt.cfg.num_classes else 0)
    if prefix + body_len > gpt.cfg.max_seq_len:
        raise ValueError(f"the prefix ({prefix}) plus the body ({body_len} positions) exceed the GPT's max_seq_len={gpt.cfg.max_seq_len}")
