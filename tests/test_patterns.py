"""Tests of the native <-> sequence patterns (mmgen/patterns.py): exact orders, coordinates and
groups written out by hand, equality with the layouts the pipelines build today, and round trips
over random shapes, trailing dims and dtypes."""

from __future__ import annotations

import random
from math import prod

import pytest
import torch

from mmgen.patterns import (
    Cells,
    DelayCodebooks,
    FlattenCodebooks,
    FoldedFrames,
    Frames,
    ParallelCodebooks,
    Pattern,
    Raster,
    Scales,
    Subsample,
    Whole,
)
from mmgen.tokens import ContinuousContent, DiscreteContent, TokenLayout


def assert_same_layout(a: TokenLayout, b: TokenLayout) -> None:
    assert torch.equal(a.coords, b.coords)
    assert torch.equal(a.groups, b.groups)
    assert torch.equal(a.valid, b.valid)
    assert a.content == b.content


def raster_index(shape: tuple[int, ...]) -> torch.Tensor:
    """``[1, *shape, rank]``: each native position holds its own grid index."""
    axes = [torch.arange(s, dtype=torch.float32) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).unsqueeze(0)


# ---------------------------------------------------------------------------------------------
# hand-checked small cases
# ---------------------------------------------------------------------------------------------
def test_raster_2x3_order_coords_groups():
    p = Raster((2, 3))
    x = torch.arange(6).view(1, 2, 3)
    assert p.to_sequence(x).tolist() == [[0, 1, 2, 3, 4, 5]]
    lay = p.layout()
    assert lay.coords[0].tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    assert lay.groups[0].tolist() == [0, 1, 2, 3, 4, 5]
    assert (p.num_positions, p.group_sizes) == (6, (1,) * 6)
    assert p.group_slices[:2] == ((0, 1), (1, 2))


@pytest.mark.parametrize("shape", [(5,), (2, 3), (16, 16), (2, 3, 4)])
def test_raster_matches_token_layout_grid(shape):
    content = DiscreteContent((7,))
    assert_same_layout(Raster(shape).layout(content=content), TokenLayout.grid(shape, content=content))


def test_cells_4x4_cell2_order():
    p = Cells((4, 4), 2)
    x = torch.arange(16).view(1, 4, 4)
    assert p.to_sequence(x).tolist() == [[0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]]
    lay = p.layout()
    assert lay.groups[0].tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    assert lay.coords[0, :8].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [0, 3], [1, 2], [1, 3]]
    assert p.group_slices == ((0, 4), (4, 8), (8, 12), (12, 16))


@pytest.mark.parametrize("shape,cell", [((4, 4), 2), ((6, 4), 2), ((6, 9), 3), ((8, 8), 8), ((3, 5), 1)])
def test_cells_matches_token_layout_cells(shape, cell):
    content = ContinuousContent(4)
    assert_same_layout(Cells(shape, cell).layout(content=content), TokenLayout.cells(shape, cell, content=content))


def test_subsample_4x4_stride2_order():
    p = Subsample((4, 4), 2)
    x = torch.arange(16).view(1, 4, 4)
    assert p.to_sequence(x).tolist() == [[0, 2, 8, 10, 1, 3, 9, 11, 4, 6, 12, 14, 5, 7, 13, 15]]
    assert p.layout().groups[0].tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    assert p.layout().coords[0, 4:8].tolist() == [[0, 1], [0, 3], [2, 1], [2, 3]]  # phase (0, 1)


@pytest.mark.parametrize("shape,stride", [((4, 4), 2), ((6, 4), 2), ((6, 9), 3), ((8, 8), 8), ((3, 5), 1)])
def test_subsample_matches_the_layout_next_x_used_before_patterns(shape, stride):
    def subsample_layout(shape, stride, *, content):  # pipelines/next_x.py before mmgen.patterns, kept as the reference
        h, w = shape
        coords, groups = [], []
        for k, (py, px) in enumerate((py, px) for py in range(stride) for px in range(stride)):
            yy, xx = torch.meshgrid(torch.arange(py, h, stride), torch.arange(px, w, stride), indexing="ij")
            coords.append(torch.stack([yy, xx], dim=-1).reshape(-1, 2))
            groups.append(torch.full((yy.numel(),), k, dtype=torch.long))
        return TokenLayout.from_coords(torch.cat(coords).float(), torch.cat(groups), content=content)

    content = ContinuousContent(3)
    assert_same_layout(Subsample(shape, stride).layout(content=content), subsample_layout(shape, stride, content=content))


def test_whole_is_one_group_in_raster_order():
    p = Whole((2, 3))
    x = torch.arange(6).view(1, 2, 3)
    assert p.to_sequence(x).tolist() == [[0, 1, 2, 3, 4, 5]]
    assert p.group_sizes == (6,) and p.group_slices == ((0, 6),)
    coords = TokenLayout.grid((2, 3)).coords[0]  # how next_x builds its "image" entity today
    assert_same_layout(p.layout(), TokenLayout.from_coords(coords, torch.zeros(6, dtype=torch.long)))


def test_scales_rank2_small_case():
    p = Scales([1, 2])
    lay = p.layout()
    assert lay.coords[0].tolist() == [[0, 0.5, 0.5], [1, 0, 0], [1, 0, 1], [1, 1, 0], [1, 1, 1]]
    assert lay.groups[0].tolist() == [0, 1, 1, 1, 1]
    native = [torch.tensor([[[7]]]), torch.tensor([[[1, 2], [3, 4]]])]
    assert p.to_sequence(native).tolist() == [[7, 1, 2, 3, 4]]
    assert (p.group_sizes, p.group_slices) == ((1, 4), ((0, 1), (1, 5)))


@pytest.mark.parametrize("sides", [[1, 2, 3, 4, 5, 6, 8, 10, 13, 16], [1, 2, 4], [3], [2, 5, 7]])
def test_scales_rank2_matches_token_layout_scales(sides):
    content = DiscreteContent((4096,))
    assert_same_layout(Scales(sides, 2).layout(content=content), TokenLayout.scales(sides, content=content))


def test_scales_rank1_and_rank3_coords():
    lay1 = Scales([1, 2, 4], 1).layout()
    assert lay1.coords[0].tolist() == [[0, 1.5], [1, 0.5], [1, 2.5], [2, 0], [2, 1], [2, 2], [2, 3]]
    assert lay1.groups[0].tolist() == [0, 1, 1, 2, 2, 2, 2]
    lay3 = Scales([1, 2], 3).layout()
    assert lay3.coords.shape == (1, 9, 4)
    assert lay3.coords[0, 0].tolist() == [0, 0.5, 0.5, 0.5]
    assert lay3.coords[0, 1:3].tolist() == [[1, 0, 0, 0], [1, 0, 0, 1]]  # (scale, z, y, x), x fastest
    assert lay3.groups[0].tolist() == [0] + [1] * 8


def test_frames_groups_per_frame_or_per_position():
    p = Frames(2, (1, 2))
    assert p.layout().coords[0].tolist() == [[0, 0, 0], [0, 0, 1], [1, 0, 0], [1, 0, 1]]
    assert p.layout().groups[0].tolist() == [0, 0, 1, 1]
    assert Frames(2, (1, 2), per_frame=False).layout().groups[0].tolist() == [0, 1, 2, 3]
    x = torch.arange(8).view(1, 2, 1, 2, 2)  # two channels per position
    assert p.to_sequence(x).tolist() == [[[0, 1], [2, 3], [4, 5], [6, 7]]]
    assert_same_layout(Frames(3, (2, 2), per_frame=False).layout(), TokenLayout.grid((3, 2, 2)))


def test_folded_frames_put_a_frame_in_one_position():
    """A frame's positions become the entries of one position (raster order inside the frame), one group per frame."""
    p = FoldedFrames(2, (2, 3))
    assert p.layout().coords[0].tolist() == [[0], [1]] and p.group_sizes == (1, 1)
    x = torch.arange(24).view(2, 2, 2, 3)
    seq = p.to_sequence(x)
    assert seq.shape == (2, 2, 6) and seq[1, 0].tolist() == list(range(12, 18))
    assert torch.equal(p.from_sequence(seq), x)
    with pytest.raises(ValueError, match=r"seq must have shape \[B, 2, 6"):
        p.from_sequence(seq[..., :4])


def test_flatten_codebooks_t_major():
    p = FlattenCodebooks(2, 3)
    native = torch.tensor([[[0, 1, 2], [10, 11, 12]]])
    assert p.to_sequence(native).tolist() == [[0, 1, 2, 10, 11, 12]]
    lay = p.layout()
    assert lay.coords[0].tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    assert lay.groups[0].tolist() == [0, 1, 2, 3, 4, 5]


def test_delay_codebooks_T3_K2_written_out():
    p = DelayCodebooks(3, 2, empty_id=99)
    native = torch.tensor([[[0, 1], [10, 11], [20, 21]]])  # code = 10 * t + k
    seq = p.to_sequence(native)
    assert seq.tolist() == [[[0, 99], [10, 1], [20, 11], [99, 21]]]
    assert p.entry_valid.tolist() == [[True, False], [True, True], [True, True], [False, True]]
    assert p.layout().coords[0].tolist() == [[0], [1], [2], [3]]
    assert p.layout().groups[0].tolist() == [0, 1, 2, 3]
    assert (p.num_positions, p.group_sizes) == (4, (1, 1, 1, 1))
    # the empty entries are ignored on the way back, whatever the model put there
    scribbled = seq.masked_fill(~p.entry_valid, 5)
    assert torch.equal(p.from_sequence(scribbled), native)


def test_delay_with_one_codebook_is_the_identity():
    p = DelayCodebooks(4, 1, empty_id=-1)
    native = torch.arange(4).view(1, 4, 1)
    assert torch.equal(p.to_sequence(native), native)
    assert bool(p.entry_valid.all())


def test_parallel_codebooks_keeps_codes_together():
    p = ParallelCodebooks(3, 2)
    native = torch.tensor([[[0, 1], [10, 11], [20, 21]]])
    assert torch.equal(p.to_sequence(native), native)
    assert p.layout().coords[0].tolist() == [[0], [1], [2]]
    assert p.group_sizes == (1, 1, 1)


def test_patterns_are_values():
    assert Cells([4, 4], 2) == Cells((4, 4), 2)
    assert len({Cells((4, 4), 2), Cells((4, 4), 2), Subsample((4, 4), 2)}) == 2
    lay = Raster((2, 2)).layout()
    lay.coords.zero_()  # a fresh layout each call: editing one leaves the pattern intact
    assert Raster((2, 2)).layout().coords[0, -1].tolist() == [1, 1]


# ---------------------------------------------------------------------------------------------
# properties over random draws
# ---------------------------------------------------------------------------------------------
def random_pattern(rng: random.Random) -> Pattern:
    side = lambda: rng.randint(1, 5)  # noqa: E731
    kind = rng.choice(["raster", "cells", "subsample", "whole", "scales", "frames", "folded", "flatten", "delay", "parallel"])
    if kind == "raster":
        return Raster(tuple(side() for _ in range(rng.randint(1, 3))))
    if kind == "cells":
        cell = rng.randint(1, 3)
        return Cells((cell * side(), cell * side()), cell)
    if kind == "subsample":
        stride = rng.randint(1, 3)
        return Subsample((stride * side(), stride * side()), stride)
    if kind == "whole":
        return Whole(tuple(side() for _ in range(rng.randint(1, 3))))
    if kind == "scales":
        return Scales(sorted({side() for _ in range(rng.randint(1, 4))}), rng.randint(1, 3))
    if kind == "frames":
        return Frames(side(), tuple(side() for _ in range(rng.randint(1, 2))), per_frame=rng.random() < 0.5)
    if kind == "folded":
        return FoldedFrames(side(), tuple(side() for _ in range(rng.randint(1, 2))))
    if kind == "flatten":
        return FlattenCodebooks(side(), side())
    if kind == "delay":
        return DelayCodebooks(side(), side(), empty_id=rng.randint(0, 9))
    return ParallelCodebooks(side(), side())


def random_tokens(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.randint(0, 1000, shape) if dtype == torch.long else torch.randn(shape)


def random_native(p: Pattern, batch: int, rest: tuple[int, ...], dtype: torch.dtype):
    if isinstance(p, Scales):
        return [random_tokens((batch, *(s,) * p.rank, *rest), dtype) for s in p.sides]
    return random_tokens((batch, *native_dims(p), *rest), dtype)


def native_dims(p: Pattern) -> tuple[int, ...]:
    """The per-sample native dims before any trailing ones (all patterns but Scales)."""
    if isinstance(p, (Frames, FoldedFrames)):
        return (p.num_frames, *p.frame_shape)
    if isinstance(p, (FlattenCodebooks, DelayCodebooks, ParallelCodebooks)):
        return (p.steps, p.codebooks)
    return p.shape


def sequence_dims(p: Pattern) -> tuple[int, ...]:
    """``(L, *kept)``: the per-sample sequence dims before any trailing ones."""
    if isinstance(p, FoldedFrames):
        return (p.num_positions, prod(p.frame_shape))
    return (p.num_positions, p.codebooks) if isinstance(p, (DelayCodebooks, ParallelCodebooks)) else (p.num_positions,)


def assert_native_equal(a, b) -> None:
    if isinstance(a, list):
        assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    else:
        assert torch.equal(a, b)


@pytest.mark.usefixtures("one_torch_thread")
def test_round_trips_over_random_patterns():
    torch.manual_seed(0)
    rng = random.Random(0)
    for _ in range(60):
        p = random_pattern(rng)
        batch, rest = rng.randint(1, 3), tuple(rng.randint(1, 3) for _ in range(rng.randint(0, 2)))
        dtype = rng.choice([torch.long, torch.float32])
        native = random_native(p, batch, rest, dtype)
        seq = p.to_sequence(native)
        assert seq.shape == (batch, *sequence_dims(p), *rest) and seq.dtype == dtype, p
        assert_native_equal(p.from_sequence(seq), native)
        s = random_tokens(tuple(seq.shape), dtype)
        back = p.to_sequence(p.from_sequence(s))
        if isinstance(p, DelayCodebooks):
            keep = p.entry_valid.view(1, *p.entry_valid.shape, *(1,) * len(rest)).expand_as(s)
            assert torch.equal(back[keep], s[keep]) and bool((back[~keep] == p.empty_id).all()), p
        else:
            assert torch.equal(back, s), p


def test_layouts_over_random_patterns():
    rng = random.Random(1)
    for _ in range(60):
        p = random_pattern(rng)
        lay = p.layout()
        groups = lay.groups[0]
        assert lay.seq_len == p.num_positions == sum(p.group_sizes), p
        assert bool((groups[1:] >= groups[:-1]).all()) and groups[0] == 0, p
        assert lay.num_groups == len(p.group_sizes) and bool(lay.valid.all()), p
        for g, (start, end) in enumerate(p.group_slices):
            assert bool((groups[start:end] == g).all()) and end - start == p.group_sizes[g], p


def test_coords_say_where_each_sequence_position_came_from():
    """Feeding each native position its own coordinates through to_sequence reproduces layout().coords."""
    rng = random.Random(2)
    checked = 0
    while checked < 40:
        p = random_pattern(rng)
        if isinstance(p, Scales):
            coords = p.layout().coords[0].split(p.group_sizes)
            native = [c.view(1, *(s,) * p.rank, p.rank + 1) for c, s in zip(coords, p.sides)]
        elif isinstance(p, (DelayCodebooks, ParallelCodebooks, FoldedFrames)):
            continue
        else:
            native = raster_index(native_dims(p))
        assert torch.equal(p.to_sequence(native)[0], p.layout().coords[0]), p
        checked += 1


def test_tensors_stay_on_their_device():
    patterns = [Raster((2, 3)), Cells((4, 4), 2), Subsample((4, 4), 2), Whole((2, 2)), Frames(2, (2,)),
                FoldedFrames(2, (2, 3)), FlattenCodebooks(3, 2), DelayCodebooks(3, 2, empty_id=4), ParallelCodebooks(3, 2), Scales([1, 2])]
    for p in patterns:
        native = random_native(p, 2, (5,), torch.float32)
        native = [x.to("meta") for x in native] if isinstance(native, list) else native.to("meta")
        seq = p.to_sequence(native)
        assert seq.device.type == "meta" and seq.shape == (2, *sequence_dims(p), 5), p
        back = p.from_sequence(seq)
        assert all(x.device.type == "meta" for x in (back if isinstance(back, list) else [back])), p


# ---------------------------------------------------------------------------------------------
# errors name the argument
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "build,error,match",
    [
        (lambda: Raster((0, 3)), ValueError, r"shape\[0\] must be a positive int"),
        (lambda: Raster(()), ValueError, "shape must name at least one axis"),
        (lambda: Raster(16), TypeError, "shape must be a sequence"),
        (lambda: Cells((4, 4, 4), 2), ValueError, "shape must have 2 sides"),
        (lambda: Cells((4, 6), 4), ValueError, "divisible by cell=4"),
        (lambda: Cells((4, 4), 0), ValueError, "cell must be a positive int"),
        (lambda: Subsample((4, 6), 4), ValueError, "divisible by stride=4"),
        (lambda: Subsample((4, 4), 0), ValueError, "stride must be a positive int"),
        (lambda: Scales([]), ValueError, "sides must name at least one axis"),
        (lambda: Scales([1, 2], 0), ValueError, "rank must be a positive int"),
        (lambda: Frames(0, (2, 2)), ValueError, "num_frames must be a positive int"),
        (lambda: FoldedFrames(2, (2, 0)), ValueError, r"frame_shape\[1\] must be a positive int"),
        (lambda: FlattenCodebooks(2, 0), ValueError, "codebooks must be a positive int"),
        (lambda: ParallelCodebooks(0, 2), ValueError, "steps must be a positive int"),
        (lambda: DelayCodebooks(3, 2, empty_id=1.5), TypeError, "empty_id must be an int"),
    ],
)
def test_bad_construction_names_the_argument(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_bad_tensors_name_the_argument():
    with pytest.raises(ValueError, match=r"native must have shape \[B, 4, 4, \*rest\], got \(1, 4, 5\)"):
        Cells((4, 4), 2).to_sequence(torch.zeros(1, 4, 5))
    with pytest.raises(ValueError, match=r"seq must have shape \[B, 16, \*rest\]"):
        Cells((4, 4), 2).from_sequence(torch.zeros(1, 15))
    with pytest.raises(TypeError, match="native must be a torch.Tensor, got list"):
        Raster((2,)).to_sequence([1, 2])
    with pytest.raises(ValueError, match=r"native must have shape \[B, 3, 2, \*rest\]"):
        DelayCodebooks(3, 2, empty_id=0).to_sequence(torch.zeros(1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"seq must have shape \[B, 4, 2, \*rest\]"):
        DelayCodebooks(3, 2, empty_id=0).from_sequence(torch.zeros(1, 3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"seq must have shape \[B, 3, 2, \*rest\]"):
        ParallelCodebooks(3, 2).from_sequence(torch.zeros(1, 3))
    scales = Scales([1, 2])
    with pytest.raises(TypeError, match="native must be a list of tensors"):
        scales.to_sequence(torch.zeros(1, 5))
    with pytest.raises(ValueError, match="native must hold 2 tensors"):
        scales.to_sequence([torch.zeros(1, 1, 1)])
    with pytest.raises(ValueError, match=r"native\[1\] must have shape \[B, 2, 2, \*rest\]"):
        scales.to_sequence([torch.zeros(1, 1, 1), torch.zeros(1, 3, 3)])
    with pytest.raises(ValueError, match=r"native\[1\] .* must share batch and trailing dims"):
        scales.to_sequence([torch.zeros(1, 1, 1, 4), torch.zeros(2, 2, 2, 4)])


def test_input_coordinates_place_each_slot_at_the_token_it_holds():
    from mmgen.patterns import InputCoordinates
    from mmgen.rope import NDRotaryEmbedding

    raster = Raster((2, 3))
    shifted = InputCoordinates(raster)
    coords = shifted.layout().coords[0]
    assert coords[0].isnan().all()
    assert torch.equal(coords[1:], raster.layout().coords[0, :-1])
    native = torch.arange(12).view(2, 2, 3)
    assert torch.equal(shifted.from_sequence(shifted.to_sequence(native)), native)
    cos, sin = NDRotaryEmbedding(head_dim=8, coord_rank=2)(coords.unsqueeze(0))
    assert cos[0, 0].abs().sum() == 0 and sin[0, 0].abs().sum() == 0  # no place: queries and keys zeroed
    assert torch.isfinite(cos).all() and torch.isfinite(sin).all()
    with pytest.raises(ValueError, match="one position per group"):
        InputCoordinates(Cells((4, 4), 2))
