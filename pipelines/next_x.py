"""xAR-style next-X generation: the AR unit ("entity") is a token, a cell, a strided subsample, a scale or the whole grid.

The body is split into groups, one entity each, generated in order; the slots of group k hold the
previous entity on group k's positions (group 0 holds the GPT's start embedding):

- ``"token"``: one position per group, raster order (:class:`mmgen.patterns.Raster`);
- ``"cell"``: ``cell_size × cell_size`` blocks in raster order (:class:`mmgen.patterns.Cells`);
- ``"subsample"``: s² strided sub-grids, s = ``cell_size`` (:class:`mmgen.patterns.Subsample`);
- ``"scale"`` (continuous only): entity k is the latent grid area-downsampled to ``patch_nums[k]``
  and group k's input is entity k − 1 upsampled (bilinear) to ``patch_nums[k]``; over a ``(t, h, w)`` video
  grid the scales are ``(t, h, w)`` boxes (a space-time pyramid, trilinear; default
  :func:`default_space_time_scales`);
- ``"image"``: one group, everything at once (:class:`mmgen.patterns.Whole`);
- ``"frame"`` (a ``(t, h, w)`` video grid): one latent frame per group, the KV cache kept across frames;
  latents are a frame's positions (:class:`mmgen.patterns.Frames`), ids one position whose codebooks are
  the frame's ids (:class:`mmgen.patterns.FoldedFrames`), so a depth head draws them jointly; a video
  grid also takes ``"token"`` and ``"image"``.

The head decides what a position is: a flow head draws continuous latents (xAR), trained with
noisy-context learning — every context entity noised by the head to its own level t per sample,
plus the embedding of t, clean (t = 1) at inference; a categorical head draws each entity's ids in
parallel, with clean teacher forcing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from math import ceil, prod
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from mmgen.conditioning import Conditioner
from mmgen.gpt import GPT
from mmgen.heads import Head
from mmgen.patterns import Cells, FoldedFrames, Frames, Raster, Scales, Subsample, Whole
from mmgen.programs import PreviousGroupInputs, ResampledPreviousInputs
from mmgen.protocol import check_tokenizer
from mmgen.sampling import GuidanceSchedule, SamplingConfig
from mmgen.tokens import ContinuousContent, DiscreteContent

from .base import ARPipeline, SequencePlan, sampling_options

__all__ = ["NextXPipeline", "ENTITIES", "default_patch_nums", "default_space_time_scales"]


@dataclass(frozen=True)
class EntityPlan(SequencePlan):
    """A :class:`SequencePlan` plus the sides of the scale entity's pyramid (None for the other entities)."""

    patch_nums: list[int] | list[list[int]] | None = None

ENTITIES = ("token", "cell", "subsample", "scale", "image", "frame")
UPSAMPLE_MODES = {2: "bilinear", 3: "trilinear"}


class NextXPipeline(ARPipeline):
    """Next-X prediction on the shared GPT, continuous (flow head) or discrete (categorical head).

    ``pipe(class_labels=[3, 7], guidance_scale=3.0, generator=torch.Generator().manual_seed(0))``
    returns 2 samples after one GPT step per entity; ``output_type="tokens"`` skips decoding.
    """

    def __init__(self, gpt: GPT, tokenizer: Any, head: Head, conditioner: Conditioner,
                 entity: str = "cell", cell_size: int = 2, patch_nums: list[int] | list[list[int]] | None = None,
                 num_flow_steps: int = 16, class_names: list[str] | None = None,
                 null_condition_trained: bool = False) -> None:
        super().__init__()
        _check_positive_int("num_flow_steps", num_flow_steps)
        patch_nums = self.plan(tokenizer, entity=entity, cell_size=cell_size, patch_nums=patch_nums).patch_nums
        self._register(gpt=gpt, tokenizer=tokenizer, head=head, conditioner=conditioner, class_names=class_names,
                       null_condition_trained=null_condition_trained, entity=entity, cell_size=cell_size,
                       patch_nums=patch_nums, num_flow_steps=num_flow_steps)

    @classmethod
    def plan(cls, tokenizer: Any, *, entity: str = "cell", cell_size: int = 2, patch_nums: Sequence[int] | None = None) -> EntityPlan:
        spec = check_tokenizer(tokenizer)
        if entity not in ENTITIES:
            raise ValueError(f"entity must be one of {ENTITIES}, got {entity!r}")
        _check_positive_int("cell_size", cell_size)
        rank, content = len(spec.shape), spec.content
        if rank == 3 and entity == "scale":
            return _space_time_plan(spec.shape, content, patch_nums)
        if entity == "frame" or rank == 3:
            if rank != 3 or entity not in ("frame", "token", "image"):
                raise ValueError(f"a (t, h, w) token grid (video) takes entity 'frame', 'token', 'image' or 'scale'; got "
                                 f"entity={entity!r} with the tokenizer's tokens {spec.scales or spec.shape}")
            if patch_nums is not None:
                raise ValueError(f"patch_nums is for entity='scale', got it with entity={entity!r}")
            if entity == "frame" and isinstance(content, DiscreteContent):
                return _folded_frames(spec.shape, content)
            pattern = {"frame": lambda: Frames(spec.shape[0], spec.shape[1:]), "token": lambda: Raster(spec.shape),
                       "image": lambda: Whole(spec.shape)}[entity]()
            return EntityPlan(pattern, content)
        if rank != 2:
            raise ValueError(f"NextXPipeline needs a 2D token grid (or a (t, h, w) video grid), the tokenizer's tokens are "
                             f"{spec.scales or spec.shape}")
        h, w = spec.shape
        if entity in ("cell", "subsample") and (h % cell_size or w % cell_size):
            raise ValueError(f"cell_size={cell_size} must divide the token grid {h}x{w} (entity={entity!r})")
        if entity != "scale":
            if patch_nums is not None:
                raise ValueError(f"patch_nums is for entity='scale', got it with entity={entity!r}")
            pattern = {"token": lambda: Raster((h, w)), "cell": lambda: Cells((h, w), cell_size),
                       "subsample": lambda: Subsample((h, w), cell_size), "image": lambda: Whole((h, w))}[entity]()
            return EntityPlan(pattern, content)
        if not spec.is_continuous:
            raise ValueError("entity='scale' needs continuous latents (and a FlowHead); a grid of ids has no coarse scales")
        if h != w:
            raise ValueError(f"entity='scale' needs a square latent grid, got {h}x{w}")
        sides = _check_patch_nums(default_patch_nums(h) if patch_nums is None else list(patch_nums), h)
        return EntityPlan(Scales(tuple(sides), rank=2), content, patch_nums=sides)

    def plan_options(self) -> dict[str, Any]:
        return {"entity": self.config.entity, "cell_size": self.config.cell_size, "patch_nums": self.config.patch_nums}

    @property
    def num_groups(self) -> int:
        """Generation steps (GPT forwards) per sample: the number of entities."""
        return len(self.pattern().group_sizes)

    def input_rule(self) -> PreviousGroupInputs:
        noisy = isinstance(self.head.content, ContinuousContent)
        if self.config.entity == "scale":
            return ResampledPreviousInputs(gpt=self.gpt, head=self.head, noisy_context=noisy, resample=self._upsample)
        return PreviousGroupInputs(gpt=self.gpt, head=self.head, noisy_context=noisy)

    # ---- the scale entity: a pyramid of pooled grids -------------------------------------------------
    def to_sequence(self, positions: torch.Tensor) -> torch.Tensor:
        if self.config.entity != "scale":
            return super().to_sequence(positions)
        pattern = self.pattern()
        grid_BC_ = positions.movedim(-1, 1)
        pyramid = [F.interpolate(grid_BC_, size=shape, mode="area").movedim(1, -1) for shape in pattern.shapes]
        return pattern.to_sequence(pyramid)

    def from_sequence(self, seq: torch.Tensor, **options: Any) -> torch.Tensor:
        if self.config.entity != "scale":
            return super().from_sequence(seq)
        return self.pattern().from_sequence(seq)[-1]

    def _upsample(self, tokens_BnC: torch.Tensor, group: int) -> torch.Tensor:
        """Entity ``group − 1`` (a grid in rows) upsampled (bi- or trilinear) to group ``group``'s grid, as rows."""
        shapes = self.pattern().shapes
        B, n, C = tokens_BnC.shape
        grid = tokens_BnC.transpose(1, 2).reshape(B, C, *shapes[group - 1])
        up = F.interpolate(grid, size=shapes[group], mode=UPSAMPLE_MODES[len(shapes[group])], align_corners=False)
        return up.flatten(2).transpose(1, 2)

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
        num_flow_steps: int | None = None,
        prefill: torch.Tensor | None = None,
        sampling: SamplingConfig | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str | None = None,
        return_dict: bool = True,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
    ) -> Any:
        """Generate entity by entity; one GPT step (and one callback) per entity.

        Continuous: ``num_flow_steps`` Euler steps per entity (default: the pipeline's config; a
        ``sampling`` config's own ``num_flow_steps`` wins when set) and ``temperature`` scales the initial noise. Discrete: ``temperature`` / ``top_k`` / ``top_p`` /
        ``min_p`` filter each id's distribution. ``prefill``: the first entities of every sample, known
        (``pipe.tokenize(x)[:, :m]`` with m a whole number of entities, e.g. the first frame for image-to-video).
        """
        steps = self.config.num_flow_steps if num_flow_steps is None else num_flow_steps
        _check_positive_int("num_flow_steps", steps)
        sampling = sampling_options(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, sampling=sampling,
                                    num_flow_steps=steps)
        if sampling.num_flow_steps is None:  # a given SamplingConfig without steps: the call's / the pipeline's, not the head's
            sampling = replace(sampling, num_flow_steps=steps)
        return self._run(prompt=prompt, class_labels=class_labels, num_samples_per_prompt=num_samples_per_prompt,
                         guidance_scale=guidance_scale, sampling=sampling,
                         generator=generator, output_type=output_type, return_dict=return_dict,
                         callback_on_step_end=callback_on_step_end, prefill=prefill)


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _folded_frames(shape: tuple[int, ...], content: DiscreteContent) -> EntityPlan:
    """A discrete video grid frame by frame: a frame's ids are the codebooks of one position (:class:`FoldedFrames`)."""
    if content.num_codebooks != 1:
        raise ValueError(f"entity='frame' over ids needs one codebook per grid position, the tokenizer has {content.codebook_sizes}")
    frame_shape = tuple(shape[1:])
    folded = DiscreteContent(content.codebook_sizes * prod(frame_shape))
    return EntityPlan(FoldedFrames(shape[0], frame_shape), folded)


def _space_time_plan(shape: tuple[int, ...], content: Any, patch_nums: Sequence[Sequence[int]] | None) -> EntityPlan:
    """A ``(t, h, w)`` latent grid as a space-time pyramid of pooled grids (next-scale over video)."""
    if isinstance(content, DiscreteContent):
        raise ValueError("entity='scale' needs continuous latents (and a FlowHead); a grid of ids has no coarse scales")
    if patch_nums is None:
        if shape[1] != shape[2]:
            raise ValueError(f"the default space-time pyramid needs square latent frames, got {shape}; pass patch_nums")
        scales = default_space_time_scales(shape)
    else:
        scales = _check_space_time_scales(patch_nums, tuple(shape))
    return EntityPlan(Scales(tuple(tuple(s) for s in scales), rank=3), content, patch_nums=[list(s) for s in scales])


def default_space_time_scales(shape: Sequence[int]) -> list[tuple[int, int, int]]:
    """Frame sides halving down to 1 (as :func:`default_patch_nums`), the frame count shrinking in proportion.

    ``(3, 4, 4)`` → ``[(1, 1, 1), (2, 2, 2), (3, 4, 4)]``.
    """
    t, side = shape[0], shape[1]
    return [(max(1, ceil(t * s / side)), s, s) for s in default_patch_nums(side)]


def _check_space_time_scales(patch_nums: Sequence[Sequence[int]], shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    if isinstance(patch_nums, (str, bytes)) or not isinstance(patch_nums, Sequence) or not patch_nums:
        raise ValueError(f"patch_nums of a (t, h, w) grid must be a list of (t, h, w) scales, got {patch_nums!r}")
    scales = []
    for entry in patch_nums:
        if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence) or len(entry) != 3:
            raise ValueError(f"patch_nums of a (t, h, w) grid must be a list of (t, h, w) scales, got the entry {entry!r}")
        for n in entry:
            _check_positive_int("patch_nums entries", n)
        scales.append(tuple(entry))
    if scales[-1] != shape:
        raise ValueError(f"patch_nums must end at the latent grid {shape}, got {scales[-1]}")
    for a, b in zip(scales, scales[1:]):
        if any(y < x for x, y in zip(a, b)) or a == b:
            raise ValueError(f"patch_nums must grow coarse to fine with no axis shrinking, got {a} then {b}")
    return scales


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
