"""Tests of the token-layout contract (mmgen/tokens.py): coordinates, groups, padding and the
group-causal attention mask, checked entry by entry against hand-written expectations."""

from __future__ import annotations

import pytest
import torch

from mmgen.tokens import ContinuousContent, DiscreteContent, TokenLayout

VAR_PATCH_NUMS = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]
# first position of scales 1..9: cumulative sums of pn^2 = 1, 4, 9, 16, 25, 36, 64, 100, 169, (256)
VAR_BOUNDARIES = [1, 5, 14, 30, 55, 91, 155, 255, 424]


def bits(text: str) -> torch.Tensor:
    """A literal boolean matrix: one row per line, ``x`` = may attend, ``.`` = masked (spaces ignored)."""
    rows = [line.replace(" ", "") for line in text.strip().splitlines()]
    assert all(set(r) <= {"x", "."} for r in rows), rows
    return torch.tensor([[c == "x" for c in r] for r in rows], dtype=torch.bool)


def tril(n: int) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool).tril()


# ---------------------------------------------------------------------------------------------
# 1. 16x16 raster grid
# ---------------------------------------------------------------------------------------------
def test_raster_grid_16x16_coords_groups():
    lay = TokenLayout.grid((16, 16))
    assert (lay.batch_size, lay.seq_len, lay.coord_rank) == (1, 256, 2)
    assert lay.coords.dtype == torch.float32 and lay.groups.dtype == torch.long
    assert lay.valid.dtype == torch.bool and bool(lay.valid.all())
    assert lay.num_groups == 256
    assert lay.lengths.tolist() == [256]
    # raster order: row h, then column w
    assert lay.coords[0, 0].tolist() == [0.0, 0.0]
    assert lay.coords[0, 1].tolist() == [0.0, 1.0]
    assert lay.coords[0, 15].tolist() == [0.0, 15.0]
    assert lay.coords[0, 16].tolist() == [1.0, 0.0]
    assert lay.coords[0, 37].tolist() == [2.0, 5.0]  # 37 = 2*16 + 5
    assert lay.coords[0, 255].tolist() == [15.0, 15.0]
    expected = [[float(h), float(w)] for h in range(16) for w in range(16)]
    assert lay.coords[0].tolist() == expected
    assert lay.groups[0].tolist() == list(range(256))


def test_raster_grid_16x16_mask():
    mask = TokenLayout.grid((16, 16)).attention_mask()
    assert mask.shape == (1, 256, 256) and mask.dtype == torch.bool
    assert mask[0, 0, 0]  # first token sees itself
    assert not mask[0, 0, 1]  # ... and nothing after it
    assert mask[0, 16, 15]  # (1,0) sees (0,15), the previous raster token
    assert not mask[0, 15, 16]  # (0,15) must not see (1,0)
    assert mask[0, 17, 1]  # (1,1) sees (0,1) directly above
    assert not mask[0, 1, 17]  # ... but not the other way round
    assert bool(mask[0, 255].all())  # last token sees everything
    assert int(mask[0, 100].sum()) == 101  # token 100 sees tokens 0..100
    assert torch.equal(mask[0], tril(256))


# ---------------------------------------------------------------------------------------------
# 2. 1D flexible sequence of 1..256 tokens, batched with padding
# ---------------------------------------------------------------------------------------------
def test_sequence_of_one_token():
    lay = TokenLayout.sequence(1)
    assert lay.coords.tolist() == [[[0.0]]]
    assert lay.groups.tolist() == [[0]]
    assert torch.equal(lay.attention_mask(), torch.tensor([[[True]]]))


def test_sequence_small_mask_literal():
    lay = TokenLayout.sequence(4)
    assert lay.coords[0, :, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    expected = bits(
        """
        x . . .
        x x . .
        x x x .
        x x x x
        """
    )
    assert torch.equal(lay.attention_mask()[0], expected)


def test_sequence_start_offsets_coords_only():
    lay = TokenLayout.sequence(3, start=5)
    assert lay.coords[0, :, 0].tolist() == [5.0, 6.0, 7.0]
    assert lay.groups[0].tolist() == [0, 1, 2]


def test_sequence_256():
    lay = TokenLayout.sequence(256)
    assert (lay.seq_len, lay.coord_rank, lay.num_groups) == (256, 1, 256)
    assert lay.coords[0, 255, 0].item() == 255.0
    mask = lay.attention_mask()
    assert mask[0, 255, 0] and mask[0, 128, 128] and not mask[0, 128, 129]
    assert torch.equal(mask[0], tril(256))


def test_sequence_batch_padding_small_literal():
    # lengths 3, 1, 2 -> padded to T = 3
    lay = TokenLayout.stack([TokenLayout.sequence(3), TokenLayout.sequence(1), TokenLayout.sequence(2)])
    assert lay.valid.tolist() == [[True, True, True], [True, False, False], [True, True, False]]
    assert lay.lengths.tolist() == [3, 1, 2]
    mask = lay.attention_mask()
    assert torch.equal(mask[0], bits("x . .\nx x .\nx x x"))
    # row 0 sees itself only; rows 1, 2 are padding: each sees only itself
    assert torch.equal(mask[1], bits("x . .\n. x .\n. . x"))
    # rows 0, 1 causal over the two valid keys; padding key 2 is invisible; padding row 2 sees itself
    assert torch.equal(mask[2], bits("x . .\nx x .\n. . x"))


def test_sequence_batch_padding_up_to_256():
    lengths = [1, 17, 256, 100]
    lay = TokenLayout.stack([TokenLayout.sequence(n) for n in lengths])
    assert (lay.batch_size, lay.seq_len) == (4, 256)
    assert lay.lengths.tolist() == lengths
    mask = lay.attention_mask()
    # named entries
    assert mask[1, 16, 0] and mask[1, 16, 16]  # last valid token of the 17-long row
    assert not mask[1, 20, 16]  # padding query 20 does not see valid key 16 ...
    assert mask[1, 20, 20]  # ... only itself
    assert not mask[1, 16, 17]  # padding key 17 is invisible
    assert not mask[0, 0, 1]  # length-1 row: position 0 only sees 0
    assert mask[2, 255, 0]  # the full-length row is unpadded
    for b, n in enumerate(lengths):
        # valid rows are exactly the unpadded sequence's mask, and see no padding key
        assert torch.equal(mask[b, :n, :n], TokenLayout.sequence(n).attention_mask()[0])
        assert not bool(mask[b, :n, n:].any())
        # padding rows see only themselves
        assert torch.equal(mask[b, n:], torch.eye(256, dtype=torch.bool)[n:])
    # padded coordinates are zeros, valid ones kept
    assert lay.coords[1, :17, 0].tolist() == [float(i) for i in range(17)]
    assert not bool(lay.coords[1, 17:].any())


def test_stack_pad_to():
    lay = TokenLayout.stack([TokenLayout.sequence(2), TokenLayout.sequence(3)], pad_to=5)
    assert lay.seq_len == 5
    assert lay.valid.tolist() == [[True, True, False, False, False], [True, True, True, False, False]]
    expected_b0 = bits(
        """
        x . . . .
        x x . . .
        . . x . .
        . . . x .
        . . . . x
        """
    )
    assert torch.equal(lay.attention_mask()[0], expected_b0)


# ---------------------------------------------------------------------------------------------
# 3. VAR's 10-scale pyramid
# ---------------------------------------------------------------------------------------------
def test_var_pyramid_groups():
    lay = TokenLayout.scales(VAR_PATCH_NUMS)
    assert (lay.seq_len, lay.coord_rank, lay.num_groups) == (680, 3, 10)
    g = lay.groups[0]
    assert g[0].item() == 0
    assert g[1:5].tolist() == [1] * 4
    assert g[5:14].tolist() == [2] * 9
    assert g[424:].tolist() == [9] * 256
    for k, b in enumerate(VAR_BOUNDARIES):
        assert g[b - 1].item() == k and g[b].item() == k + 1, b
    # the scale index is also the first coordinate
    assert torch.equal(lay.coords[0, :, 0], g.float())


def test_var_pyramid_mask():
    mask = TokenLayout.scales(VAR_PATCH_NUMS).attention_mask()[0]
    assert mask.shape == (680, 680)
    # position 0 (scale 0) sees only itself
    assert mask[0, 0] and int(mask[0].sum()) == 1
    # scale-1 positions 1..4 see 0..4 (incl. later positions of their own scale), not 5
    for i in range(1, 5):
        assert mask[i, :5].all() and not mask[i, 5:].any(), i
    assert mask[1, 4]  # first scale-1 token sees the last scale-1 token (same group)
    # scale 2 (positions 5..13) sees 0..13
    assert mask[5, :14].all() and not mask[5, 14:].any()
    assert mask[13, 5] and not mask[13, 14]
    # every position of the last scale (424..679) sees everything
    assert mask[424:].all()
    # group boundaries: the last token of scale k does not see the first of scale k+1, the reverse holds
    for b in VAR_BOUNDARIES:
        assert not mask[b - 1, b], b
        assert mask[b, b - 1] and mask[b, b] and mask[b - 1, b - 1], b
    # whole matrix: block-lower-triangular over the 10 scales
    sizes = [pn * pn for pn in VAR_PATCH_NUMS]
    expected = torch.zeros(680, 680, dtype=torch.bool)
    row0 = 0
    for size in sizes:
        expected[row0 : row0 + size, : row0 + size] = True
        row0 += size
    assert torch.equal(mask, expected)


def test_var_pyramid_coords_centre_convention():
    c = TokenLayout.scales(VAR_PATCH_NUMS).coords[0]
    # scale 0: its one cell covers the whole 16x16 grid -> centre at 7.5
    assert c[0].tolist() == [0.0, 7.5, 7.5]
    # scale 1 (2x2): cells cover 8x8 blocks -> centres 3.5 and 11.5, raster order
    assert c[1:5].tolist() == [[1.0, 3.5, 3.5], [1.0, 3.5, 11.5], [1.0, 11.5, 3.5], [1.0, 11.5, 11.5]]
    # scale 2 (3x3): cell width 16/3, centres 16/6 - 0.5, 7.5, 16*5/6 - 0.5; position 9 is the middle cell
    assert torch.allclose(c[5], torch.tensor([2.0, 16 / 6 - 0.5, 16 / 6 - 0.5]))
    assert c[9].tolist() == [2.0, 7.5, 7.5]
    assert torch.allclose(c[13], torch.tensor([2.0, 80 / 6 - 0.5, 80 / 6 - 0.5]))
    # scale 3 (4x4): 4x4 blocks -> 1.5, 5.5, 9.5, 13.5
    assert c[14].tolist() == [3.0, 1.5, 1.5] and c[29].tolist() == [3.0, 13.5, 13.5]
    # scale 6 (8x8): 2x2 blocks -> 0.5, 2.5, ...
    assert c[91].tolist() == [6.0, 0.5, 0.5] and c[92].tolist() == [6.0, 0.5, 2.5]
    # last scale (16x16): the finest grid itself, integer coordinates
    assert c[424].tolist() == [9.0, 0.0, 0.0]
    assert c[425].tolist() == [9.0, 0.0, 1.0]
    assert c[440].tolist() == [9.0, 1.0, 0.0]
    assert c[679].tolist() == [9.0, 15.0, 15.0]


def test_small_pyramid_mask_literal():
    lay = TokenLayout.scales([1, 2])
    assert lay.groups[0].tolist() == [0, 1, 1, 1, 1]
    expected = bits(
        """
        x . . . .
        x x x x x
        x x x x x
        x x x x x
        x x x x x
        """
    )
    assert torch.equal(lay.attention_mask()[0], expected)


# ---------------------------------------------------------------------------------------------
# 4. (t, h, w) video grid
# ---------------------------------------------------------------------------------------------
def test_video_grid():
    lay = TokenLayout.grid((2, 3, 4))
    assert (lay.seq_len, lay.coord_rank, lay.num_groups) == (24, 3, 24)
    c = lay.coords[0]
    assert c[0].tolist() == [0.0, 0.0, 0.0]
    assert c[1].tolist() == [0.0, 0.0, 1.0]  # w fastest
    assert c[4].tolist() == [0.0, 1.0, 0.0]  # then h
    assert c[12].tolist() == [1.0, 0.0, 0.0]  # then t: frame 1 starts at 3*4 = 12
    assert c[23].tolist() == [1.0, 2.0, 3.0]
    assert c.tolist() == [[float(t), float(h), float(w)] for t in range(2) for h in range(3) for w in range(4)]
    mask = lay.attention_mask()[0]
    assert mask[12, 11] and not mask[11, 12]  # frame 1 sees all of frame 0, not the reverse
    assert mask[12, :12].all() and not mask[12, 13:].any()
    assert torch.equal(mask, tril(24))


# ---------------------------------------------------------------------------------------------
# 5. audio frames with 8 RVQ codebooks
# ---------------------------------------------------------------------------------------------
def _audio_content() -> DiscreteContent:
    return DiscreteContent((1024,) * 8)


def test_audio_layout():
    content = _audio_content()
    lay = TokenLayout.sequence(50, content=content)
    assert lay.content is content
    assert content.num_codebooks == 8 and content.codebook_sizes == (1024,) * 8
    assert lay.seq_len == 50 and lay.coord_rank == 1
    mask = lay.attention_mask()[0]
    assert mask[49, 0] and not mask[0, 49] and mask[10, 10] and not mask[10, 11]
    assert torch.equal(mask, tril(50))
    # content survives the layout operations
    assert lay.with_prefix(2).content is content
    assert lay.expand(3).content is content
    assert lay.slice(0, 10).content is content
    assert TokenLayout.stack([lay, TokenLayout.sequence(20, content=content)]).content is content


def test_audio_check_ids_accepts_valid():
    content = _audio_content()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1024, (2, 50, 8), generator=gen)
    ids[0, 0] = 0
    ids[1, 49] = 1023  # both ends of the range are valid
    content.check_ids(ids)
    content.check_ids(ids.int())
    content.check_ids(torch.zeros(2, 0, 8, dtype=torch.long))  # empty is fine


@pytest.mark.parametrize("shape", [(2, 50), (2, 50, 7), (2, 50, 9), (50, 8), (1, 2, 50, 8)])
def test_audio_check_ids_rejects_shape(shape):
    with pytest.raises(ValueError, match=r"ids must have shape \[B, T, 8\]"):
        _audio_content().check_ids(torch.zeros(shape, dtype=torch.long))


def test_audio_check_ids_rejects_out_of_range():
    content = _audio_content()
    ids = torch.zeros(2, 50, 8, dtype=torch.long)
    ids[1, 7, 3] = 1024
    with pytest.raises(ValueError, match=r"id 1024 outside codebook 3's vocabulary \[0, 1024\)"):
        content.check_ids(ids)
    ids = torch.zeros(2, 50, 8, dtype=torch.long)
    ids[0, 2, 5] = -1
    with pytest.raises(ValueError, match=r"id -1 outside codebook 5's vocabulary \[0, 1024\)"):
        content.check_ids(ids)


def test_audio_check_ids_rejects_float_and_names_argument():
    content = _audio_content()
    with pytest.raises(TypeError, match=r"codes must be an integer tensor"):
        content.check_ids(torch.zeros(2, 50, 8), name="codes")
    with pytest.raises(TypeError, match=r"integer tensor"):
        content.check_ids([[0] * 8])  # not a tensor
    with pytest.raises(ValueError, match=r"^codes must have shape"):
        content.check_ids(torch.zeros(2, 50, dtype=torch.long), name="codes")


def test_check_ids_single_and_mixed_codebooks():
    single = DiscreteContent((16,))
    single.check_ids(torch.full((3, 4), 15))
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        single.check_ids(torch.zeros(3, 4, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"codebook 0's vocabulary \[0, 16\)"):
        single.check_ids(torch.full((3, 4), 16))
    mixed = DiscreteContent((4, 8))
    mixed.check_ids(torch.tensor([[[3, 7]]]))
    with pytest.raises(ValueError, match=r"id 5 outside codebook 0's vocabulary \[0, 4\)"):
        mixed.check_ids(torch.tensor([[[5, 5]]]))  # 5 fits codebook 1 but not codebook 0


def test_content_bad_input():
    with pytest.raises(ValueError, match="codebook_sizes"):
        DiscreteContent(())
    with pytest.raises(ValueError, match="codebook_sizes"):
        DiscreteContent((1024, 0))
    with pytest.raises(ValueError, match="dim"):
        ContinuousContent(0)
    assert ContinuousContent(16).dim == 16


# ---------------------------------------------------------------------------------------------
# 6. octree sequences of different lengths in one batch
# ---------------------------------------------------------------------------------------------
def _octree(n: int, seed: int) -> TokenLayout:
    """An octree-order sequence: coords (depth, x, y, z) per node, one group per node (next-token)."""
    gen = torch.Generator().manual_seed(seed)
    depth = torch.arange(n, dtype=torch.float32).div(3).floor().unsqueeze(1)
    xyz = torch.randint(0, 8, (n, 3), generator=gen).float()
    return TokenLayout.from_coords(torch.cat([depth, xyz], dim=1))


def test_octree_batch_padded_mask_literal():
    parts = [_octree(5, 0), _octree(9, 1), _octree(3, 2)]
    lay = TokenLayout.stack(parts)
    assert (lay.batch_size, lay.seq_len, lay.coord_rank) == (3, 9, 4)
    assert lay.lengths.tolist() == [5, 9, 3]
    assert lay.groups[0].tolist()[:5] == [0, 1, 2, 3, 4]
    for b, (part, n) in enumerate(zip(parts, [5, 9, 3])):
        assert torch.equal(lay.coords[b, :n], part.coords[0])
        assert not bool(lay.coords[b, n:].any())
    mask = lay.attention_mask()
    expected_len5 = bits(
        """
        x . . . . . . . .
        x x . . . . . . .
        x x x . . . . . .
        x x x x . . . . .
        x x x x x . . . .
        . . . . . x . . .
        . . . . . . x . .
        . . . . . . . x .
        . . . . . . . . x
        """
    )
    expected_len9 = bits(
        """
        x . . . . . . . .
        x x . . . . . . .
        x x x . . . . . .
        x x x x . . . . .
        x x x x x . . . .
        x x x x x x . . .
        x x x x x x x . .
        x x x x x x x x .
        x x x x x x x x x
        """
    )
    expected_len3 = bits(
        """
        x . . . . . . . .
        x x . . . . . . .
        x x x . . . . . .
        . . . x . . . . .
        . . . . x . . . .
        . . . . . x . . .
        . . . . . . x . .
        . . . . . . . x .
        . . . . . . . . x
        """
    )
    assert torch.equal(mask[0], expected_len5)
    assert torch.equal(mask[1], expected_len9)
    assert torch.equal(mask[2], expected_len3)


def test_stack_compacts_inner_padding_and_unbind():
    # a batch whose row has padding is restacked: valid positions are kept, in order
    inner = TokenLayout(
        coords=torch.tensor([[[0.0], [9.0], [1.0]]]),
        groups=torch.tensor([[0, 7, 1]]),
        valid=torch.tensor([[True, False, True]]),
    )
    lay = TokenLayout.stack([inner, TokenLayout.sequence(1)])
    assert lay.seq_len == 2
    assert lay.coords[0, :, 0].tolist() == [0.0, 1.0]
    assert lay.groups[0].tolist() == [0, 1]
    rows = lay.unbind()
    assert len(rows) == 2 and all(r.batch_size == 1 for r in rows)
    assert rows[1].valid.tolist() == [[True, False]]


# ---------------------------------------------------------------------------------------------
# with_prefix, cells, attention_mask(start, end), expand, slice
# ---------------------------------------------------------------------------------------------
def test_with_prefix_sequence_literal():
    lay = TokenLayout.sequence(3).with_prefix(2)
    assert lay.seq_len == 5
    assert lay.groups[0].tolist() == [0, 0, 1, 2, 3]
    assert lay.coords[0, :, 0].tolist() == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert lay.num_groups == 4
    expected = bits(
        """
        x x . . .
        x x . . .
        x x x . .
        x x x x .
        x x x x x
        """
    )  # the two prefix positions see each other (bidirectional), the body is causal after them
    assert torch.equal(lay.attention_mask()[0], expected)


def test_with_prefix_zero_is_identity_and_negative_rejected():
    lay = TokenLayout.sequence(3)
    assert lay.with_prefix(0) is lay
    with pytest.raises(ValueError, match="length must be an int >= 0"):
        lay.with_prefix(-1)


def test_with_prefix_valid_masks_padded_prefix_positions():
    lay = TokenLayout.sequence(2).with_prefix(3, valid=torch.tensor([[True, True, False], [True, False, False]]))
    assert lay.batch_size == 2 and lay.valid[:, :3].tolist() == [[True, True, False], [True, False, False]]
    mask = lay.attention_mask()
    assert mask[0, 3].tolist() == [True, True, False, True, False]  # body position 0 skips the padded prefix slot
    assert mask[1, 4].tolist() == [True, False, False, True, True]
    with pytest.raises(ValueError, match=r"valid must be a bool tensor \[B, 3\]"):
        TokenLayout.sequence(2).with_prefix(3, valid=torch.ones(1, 2, dtype=torch.bool))


def test_with_prefix_on_grid_and_pyramid():
    lay = TokenLayout.grid((2, 2)).with_prefix(1)
    assert lay.coords[0].tolist() == [[-1.0, -1.0], [0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]
    var = TokenLayout.scales(VAR_PATCH_NUMS).with_prefix(1)
    assert var.seq_len == 681 and var.num_groups == 11
    assert var.coords[0, 0].tolist() == [-1.0, -1.0, -1.0]
    assert var.coords[0, 1].tolist() == [0.0, 7.5, 7.5]
    mask = var.attention_mask()[0]
    assert mask[0, 0] and not mask[0, 1]  # the class token sees only itself
    assert mask[1, 0] and mask[1, 1] and not mask[1, 2]  # scale 0 sees the class token
    assert mask[2, :6].all() and not mask[2, 6:].any()  # scale 1 (positions 2..5) sees 0..5
    assert mask[425:].all()  # last scale sees everything


def test_with_prefix_on_padded_batch_literal():
    lay = TokenLayout.stack([TokenLayout.sequence(2), TokenLayout.sequence(1)]).with_prefix(1)
    assert lay.valid.tolist() == [[True, True, True], [True, True, False]]
    assert lay.groups.tolist()[0] == [0, 1, 2]
    mask = lay.attention_mask()
    assert torch.equal(mask[0], bits("x . .\nx x .\nx x x"))
    assert torch.equal(mask[1], bits("x . .\nx x .\n. . x"))


def test_cells_4x4_cell2():
    lay = TokenLayout.cells((4, 4), 2)
    assert lay.seq_len == 16 and lay.num_groups == 4
    assert lay.groups[0].tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    # blocks in raster order, raster order inside each block
    assert lay.coords[0].tolist() == [
        [0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0],
        [0.0, 2.0], [0.0, 3.0], [1.0, 2.0], [1.0, 3.0],
        [2.0, 0.0], [2.0, 1.0], [3.0, 0.0], [3.0, 1.0],
        [2.0, 2.0], [2.0, 3.0], [3.0, 2.0], [3.0, 3.0],
    ]  # fmt: skip
    mask = lay.attention_mask()[0]
    assert mask[0, 3] and mask[3, 0]  # positions in one cell see each other
    assert not mask[3, 4] and mask[4, 3]  # cell 0 does not see cell 1; cell 1 sees cell 0
    assert mask[15, :].all() and not mask[11, 12:].any()
    expected = torch.kron(tril(4).int(), torch.ones(4, 4, dtype=torch.int)).bool()
    assert torch.equal(mask, expected)


def test_cells_bad_input():
    with pytest.raises(ValueError, match="shape must be"):
        TokenLayout.cells((4,), 2)
    with pytest.raises(ValueError, match="cell must be a positive int"):
        TokenLayout.cells((4, 4), 0)
    with pytest.raises(ValueError, match="divisible by cell=3"):
        TokenLayout.cells((4, 4), 3)


@pytest.mark.parametrize("shape", [(0, 4), (4, -4)])
def test_cells_rejects_non_positive_shape(shape):
    with pytest.raises(ValueError, match=r"shape"):
        TokenLayout.cells(shape, 2)


def test_attention_mask_row_ranges_match_full_mask():
    var = TokenLayout.scales(VAR_PATCH_NUMS).with_prefix(1)
    full = var.attention_mask()
    for start, end in [(0, 1), (0, 2), (3, 7), (100, 425), (680, 681), (0, 681)]:
        part = var.attention_mask(start, end)
        assert part.shape == (1, end - start, 681)
        assert torch.equal(part, full[:, start:end]), (start, end)
    assert torch.equal(var.attention_mask(425), full[:, 425:])
    padded = TokenLayout.stack([_octree(5, 0), _octree(9, 1), _octree(3, 2)])
    full = padded.attention_mask()
    for start, end in [(0, 3), (4, 6), (8, 9), (2, 9)]:
        assert torch.equal(padded.attention_mask(start, end), full[:, start:end]), (start, end)
    # decode step on a padded row: query 6 of the length-3 row is padding and sees only itself
    step = padded.attention_mask(6, 7)
    assert step[2, 0].tolist() == [False] * 6 + [True, False, False]
    assert step[0, 0].tolist() == [False] * 6 + [True, False, False]
    assert step[1, 0].tolist() == [True] * 7 + [False, False]


@pytest.mark.parametrize("start,end", [(-1, 3), (0, 6), (4, 2)])
def test_attention_mask_rejects_bad_row_range(start, end):
    lay = TokenLayout.sequence(5)
    with pytest.raises(ValueError, match=r"start|end"):
        lay.attention_mask(start, end)


def test_expand():
    lay = TokenLayout.grid((2, 2)).expand(3)
    assert (lay.batch_size, lay.seq_len) == (3, 4)
    assert lay.coords.stride(0) == 0  # a view, no copy
    mask = lay.attention_mask()
    assert mask.shape == (3, 4, 4)
    for b in range(3):
        assert torch.equal(mask[b], bits("x . . .\nx x . .\nx x x .\nx x x x"))
    with pytest.raises(ValueError, match="batch size 1"):
        lay.expand(2)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        TokenLayout.grid((2, 2)).expand(0)


def test_slice():
    var = TokenLayout.scales(VAR_PATCH_NUMS)
    s = var.slice(1, 5)
    assert s.seq_len == 4 and s.coord_rank == 3
    assert s.groups[0].tolist() == [1, 1, 1, 1]
    assert s.coords[0, 0].tolist() == [1.0, 3.5, 3.5]
    padded = TokenLayout.stack([TokenLayout.sequence(2), TokenLayout.sequence(4)])
    s = padded.slice(1, 3)
    assert s.valid.tolist() == [[True, False], [True, True]]
    assert s.groups.tolist() == [[1, 0], [1, 2]]
    # on its own, a slice's mask is over its own keys: padding key 1 of row 0 invisible
    assert torch.equal(s.attention_mask()[0], bits("x .\n. x"))
    assert torch.equal(s.attention_mask()[1], bits("x .\nx x"))


# ---------------------------------------------------------------------------------------------
# bad input to the layout itself
# ---------------------------------------------------------------------------------------------
def _parts(T: int = 3, C: int = 1):
    return torch.zeros(1, T, C), torch.arange(T).unsqueeze(0), torch.ones(1, T, dtype=torch.bool)


def test_layout_rejects_wrong_shapes():
    coords, groups, valid = _parts()
    with pytest.raises(ValueError, match=r"coords must have shape \[B, T, C\]"):
        TokenLayout(coords[0], groups, valid)
    with pytest.raises(ValueError, match=r"groups must have shape \[B, T\] = \(1, 3\)"):
        TokenLayout(coords, groups[:, :2], valid)
    with pytest.raises(ValueError, match=r"groups must have shape"):
        TokenLayout(coords, groups[0], valid)
    with pytest.raises(ValueError, match=r"valid must have shape \[B, T\]"):
        TokenLayout(coords, groups, valid.expand(2, 3))
    with pytest.raises(ValueError, match=r"coords must have shape \[T, C\]"):
        TokenLayout.from_coords(torch.zeros(1, 3, 1))
    with pytest.raises(ValueError, match=r"groups must have shape"):
        TokenLayout.from_coords(torch.zeros(3, 1), torch.arange(4))


def test_layout_rejects_non_bool_valid():
    coords, groups, valid = _parts()
    with pytest.raises(TypeError, match="valid must be a bool tensor"):
        TokenLayout(coords, groups, valid.long())


def test_layout_rejects_non_monotone_groups():
    coords, _, valid = _parts()
    with pytest.raises(ValueError, match="groups must be non-decreasing"):
        TokenLayout(coords, torch.tensor([[0, 2, 1]]), valid)
    with pytest.raises(ValueError, match="groups must be non-decreasing"):
        TokenLayout.from_coords(torch.zeros(3, 1), torch.tensor([1, 0, 0]))
    # a decrease across a padding position between valid ones is still a decrease
    with pytest.raises(ValueError, match="groups must be non-decreasing"):
        TokenLayout(coords, torch.tensor([[1, 5, 0]]), torch.tensor([[True, False, True]]))
    # ... but groups at padding positions are ignored
    TokenLayout(coords, torch.tensor([[0, 9, 1]]), torch.tensor([[True, False, True]]))
    TokenLayout(coords, torch.tensor([[0, 1, 0]]), torch.tensor([[True, True, False]]))
    # equal groups (one AR step of several positions) are fine
    TokenLayout(coords, torch.tensor([[0, 0, 0]]), valid)


@pytest.mark.parametrize("length", [0, -1, 2.0, True])
def test_sequence_rejects_bad_length(length):
    with pytest.raises(ValueError, match="length must be a positive int"):
        TokenLayout.sequence(length)


def test_grid_and_scales_reject_bad_sizes():
    with pytest.raises(ValueError, match="shape must name at least one axis"):
        TokenLayout.grid(())
    with pytest.raises(ValueError, match=r"shape\[1\] must be a positive int"):
        TokenLayout.grid((16, 0))
    with pytest.raises(ValueError, match=r"shape\[0\] must be a positive int"):
        TokenLayout.grid((-2, 3, 4))
    with pytest.raises(ValueError, match="patch_nums must name at least one scale"):
        TokenLayout.scales([])
    with pytest.raises(ValueError, match=r"patch_nums\[1\] must be a positive int"):
        TokenLayout.scales([1, 0, 2])


def test_stack_bad_input():
    with pytest.raises(ValueError, match="layouts must not be empty"):
        TokenLayout.stack([])
    with pytest.raises(ValueError, match=r"layouts must share one coordinate rank, got \[1, 2\]"):
        TokenLayout.stack([TokenLayout.grid((2, 2)), TokenLayout.sequence(3)])
    with pytest.raises(ValueError, match=r"pad_to=2 is shorter than the longest sequence \(3\)"):
        TokenLayout.stack([TokenLayout.sequence(3)], pad_to=2)
