"""VariationalShapeTokenizer (VAT-style): point extraction, encode / decode, ScaleContext, training, saving, bad input."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from mmgen.protocol import check_tokenizer, has_scale_context
from tokenizers_visual import VariationalShapeConfig, VariationalShapeTokenizer
from tokenizers_visual.variational_shape import (
    exposed_faces,
    surface_band,
    surface_points,
    voxel_centres,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

R = 16
SCALES = (1, 2, 4, 8)


def tiny_config(**overrides) -> VariationalShapeConfig:
    return VariationalShapeConfig(**{**dict(
        resolution=R, num_points=128, num_latents=8, width=32, depth=1, heads=2, latent_dim=8, codebook_size=64,
        scales=SCALES, num_frequencies=4, num_queries=512, dead_code_steps=10,
    ), **overrides})


def tiny_tokenizer(**overrides) -> VariationalShapeTokenizer:
    torch.manual_seed(0)
    return VariationalShapeTokenizer(tiny_config(**overrides)).eval()


def solids(count: int = 4, *, resolution: int = R, seed: int = 0) -> torch.Tensor:
    """Balls (odd items) and boxes (even items) of random centre and size: ``[count, R, R, R]`` float 0 / 1."""
    rng = np.random.default_rng(seed)
    axis = (np.arange(resolution) + 0.5) / resolution * 2 - 1
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    grids = []
    for item in range(count):
        cx, cy, cz = rng.uniform(-0.25, 0.25, 3)
        if item % 2:
            radius = rng.uniform(0.35, 0.65)
            grids.append((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= radius**2)
        else:
            hx, hy, hz = rng.uniform(0.2, 0.6, 3)
            grids.append((abs(x - cx) <= hx) & (abs(y - cy) <= hy) & (abs(z - cz) <= hz))
    return torch.tensor(np.stack(grids), dtype=torch.float32)


def grid_iou(probs_BRRR: torch.Tensor, grids_BRRR: torch.Tensor) -> float:
    predicted, target = probs_BRRR > 0.5, grids_BRRR > 0.5
    return float((predicted & target).sum() / (predicted | target).sum())


def adam_steps(tokenizer: VariationalShapeTokenizer, batch: torch.Tensor, steps: int) -> list[dict[str, float]]:
    tokenizer.train()
    torch.manual_seed(1)
    optimizer = torch.optim.Adam(tokenizer.parameters(), lr=3e-3)
    history = []
    for _ in range(steps):
        loss, logs = tokenizer.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({"loss": loss.item(), **logs})
    tokenizer.eval()
    return history


@functools.lru_cache(maxsize=1)
def _training_run() -> tuple[dict[str, torch.Tensor], float, list[dict[str, float]]]:
    tokenizer = tiny_tokenizer()
    batch = solids(8, seed=3)
    untrained = grid_iou(tokenizer.decode(tokenizer.encode(batch)), batch)
    history = adam_steps(tokenizer, batch, 80)
    return {k: v.clone() for k, v in tokenizer.state_dict().items()}, untrained, history


def trained_tokenizer() -> VariationalShapeTokenizer:
    tokenizer = tiny_tokenizer()
    tokenizer.load_state_dict(_training_run()[0])
    return tokenizer


# ---- geometry ----------------------------------------------------------------------------------------
def test_surface_points_lie_on_exposed_faces_and_repeat_with_the_seed():
    grid = torch.zeros(1, 4, 4, 4)
    grid[0, 1, 1, 1] = 1  # one voxel: 6 exposed faces, centre at (-0.25, -0.25, -0.25), side 0.5
    assert int(exposed_faces(grid > 0.5).sum()) == 6
    points = surface_points(grid > 0.5, num_points=600, seeds=[7])
    offset = (points[0] + 0.25).abs()
    assert torch.allclose(offset.max(dim=1).values, torch.full((600,), 0.25))  # on the cube's boundary
    assert torch.equal(points, surface_points(grid > 0.5, num_points=600, seeds=[7]))
    assert not torch.equal(points, surface_points(grid > 0.5, num_points=600, seeds=[8]))
    centres = voxel_centres(4)
    assert centres.shape == (64, 3) and torch.equal(centres[1 * 16 + 2 * 4 + 3], torch.tensor([-0.25, 0.25, 0.75]))


def test_surface_band_straddles_the_boundary():
    grid = torch.zeros(1, 9, 9, 9, dtype=torch.bool)
    grid[0, 2:7, 2:7, 2:7] = True  # a 5-voxel cube
    band = surface_band(grid, width=1)[0]  # the cube's outer layer and the empty layer around it
    assert band[2, 4, 4] and band[1, 4, 4] and not band[3, 4, 4] and not band[0, 4, 4]
    wide = surface_band(grid, width=2)[0]
    assert wide[3, 4, 4] and wide[0, 4, 4] and not wide[4, 4, 4]
    full = torch.ones(1, 6, 6, 6, dtype=torch.bool)
    assert surface_band(full, width=1)[0, 0, 3, 3] and not surface_band(full, width=1)[0, 2, 3, 3]


# ---- encode / decode -----------------------------------------------------------------------------
def test_token_spec_sizes_and_bytes():
    tokenizer = tiny_tokenizer()
    spec = check_tokenizer(tokenizer)
    assert tokenizer.modality == "shape" and spec.scales == tuple((n,) for n in SCALES)
    assert spec.content.codebook_sizes == (64,) and spec.num_positions == tokenizer.num_tokens == sum(SCALES)
    assert has_scale_context(tokenizer) and tokenizer.context_dim == 8
    assert tokenizer.bytes_per_shape == pytest.approx(15 * 6 / 8)
    default = VariationalShapeConfig()
    assert default.num_tokens == 63 and default.num_tokens * math.log2(default.codebook_size) / 8 == 70.875


def test_encode_decode_shapes_ranges_and_determinism():
    tokenizer = trained_tokenizer()
    grids = solids(3, seed=5)
    ids = tokenizer.encode(grids)
    assert [tuple(i.shape) for i in ids] == [(3, n) for n in SCALES]
    assert all(i.dtype == torch.long and int(i.min()) >= 0 and int(i.max()) < 64 for i in ids)
    assert all(torch.equal(a, b) for a, b in zip(ids, tokenizer.encode(grids)))
    tokenizer.train()  # the mode changes nothing at encode (posterior mean, fixed point seed)
    assert all(torch.equal(a, b) for a, b in zip(ids, tokenizer.encode(grids)))
    tokenizer.eval()
    assert all(torch.equal(a[1:2], b) for a, b in zip(ids, tokenizer.encode(grids[1:2])))  # no batch-position effect
    probs = tokenizer.decode(ids)
    assert probs.shape == (3, R, R, R) and probs.dtype == torch.float32 and 0 <= float(probs.min()) <= float(probs.max()) <= 1
    assert torch.allclose(tokenizer.decode(ids, chunk_size=100), probs, atol=1e-6)
    flat = torch.cat(ids, dim=1)
    assert torch.equal(tokenizer.encode_flat(grids), flat) and torch.equal(tokenizer.decode(flat), probs)
    assert all(torch.equal(a, b) for a, b in zip(tokenizer.from_positions(tokenizer.to_positions(flat)), ids))
    centres = voxel_centres(R)[None].expand(3, -1, -1)
    with torch.no_grad():
        logits = tokenizer.decode_points(ids, centres)
    assert logits.shape == (3, R**3) and torch.allclose(logits.sigmoid().view(3, R, R, R), probs, atol=1e-6)


def test_point_cloud_input_matches_the_grid_it_was_drawn_from():
    tokenizer = trained_tokenizer()
    grids = solids(2, seed=6)
    points = surface_points(grids > 0.5, num_points=128, seeds=[0, 0])
    assert all(torch.equal(a, b) for a, b in zip(tokenizer.encode(points), tokenizer.encode(grids)))
    assert [tuple(i.shape) for i in tokenizer.encode(points[:, :50])] == [(2, n) for n in SCALES]  # any N


def test_truncated_decode_uses_the_first_scales_only():
    tokenizer = trained_tokenizer()
    grids = solids(2, seed=7)
    ids = tokenizer.encode(grids)
    full = tokenizer.decode(ids)
    assert torch.equal(tokenizer.decode(ids, num_scales=len(SCALES)), full)
    for k in range(1, len(SCALES)):
        changed = [ids_s if s < k else torch.randint(64, ids_s.shape) for s, ids_s in enumerate(ids)]
        coarse = tokenizer.decode(ids, num_scales=k)
        assert coarse.shape == full.shape and 0 <= float(coarse.min()) <= float(coarse.max()) <= 1
        assert torch.equal(tokenizer.decode(changed, num_scales=k), coarse)  # later scales are not read
    latents = tokenizer.ids_to_latents(ids, num_scales=2)
    expected = tokenizer.quantizer.scale_update(0, ids[0]) + tokenizer.quantizer.scale_update(1, ids[1])
    assert torch.allclose(latents, expected.transpose(1, 2))
    for bad in (0, len(SCALES) + 1, 1.5):
        with pytest.raises(ValueError, match="num_scales"):
            tokenizer.decode(ids, num_scales=bad)


# ---- ScaleContext ------------------------------------------------------------------------------------
def test_teacher_context_is_the_stepwise_context_and_what_encode_quantised_against():
    tokenizer = trained_tokenizer()
    grids = solids(3, seed=8)
    ids = tokenizer.encode(grids)
    with torch.no_grad():
        teacher = tokenizer.teacher_context(torch.cat(ids, dim=1))
        assert teacher.shape == (3, sum(SCALES) - 1, 8)
        state, steps = None, []
        for k, ids_k in enumerate(ids):
            state, inputs = tokenizer.context_step(state, k, ids_k)
            assert (inputs is None) == (k == len(SCALES) - 1)
            if inputs is not None:
                assert inputs.shape == (3, SCALES[k + 1], 8)
                steps.append(inputs)
        assert torch.equal(torch.cat(steps, dim=1), teacher)
        quantised = tokenizer.quantizer(tokenizer.encode_latents(grids))
        assert torch.equal(torch.cat(quantised.contexts[1:], dim=1), teacher)
        assert torch.equal(quantised.contexts[0], torch.zeros(3, 1, 8))
        assert torch.allclose(state.transpose(1, 2), tokenizer.ids_to_latents(ids))
    with pytest.raises(ValueError, match="scale_index"):
        tokenizer.context_step(None, len(SCALES), ids[0])
    with pytest.raises(ValueError, match="ids_Bn"):
        tokenizer.context_step(None, 1, ids[0])


# ---- training ------------------------------------------------------------------------------------------
def test_training_lowers_the_loss_and_raises_iou():
    _, untrained, history = _training_run()
    assert set(history[0]) == {"loss", "bce", "iou", "vq", "kl", "usage", "perplexity", "restarted"}
    assert all(np.isfinite(v) for logs in history for v in logs.values())
    first = np.mean([h["loss"] for h in history[:5]])
    last = np.mean([h["loss"] for h in history[-5:]])
    assert last < 0.6 * first, (first, last)
    assert np.mean([h["iou"] for h in history[-5:]]) > np.mean([h["iou"] for h in history[:5]]) + 0.2
    tokenizer = trained_tokenizer()
    batch = solids(8, seed=3)
    trained = grid_iou(tokenizer.decode(tokenizer.encode(batch)), batch)
    assert trained > untrained + 0.3, (untrained, trained)


def test_dead_codes_restart_on_batch_residuals():
    tokenizer = tiny_tokenizer(dead_code_steps=1).train()
    before = tokenizer.quantizer.embedding.weight.detach().clone()
    with torch.no_grad():
        _, logs = tokenizer.loss(solids(2))
    assert logs["restarted"] > 0 and logs["restarted"] == float(tokenizer.quantizer.last_restarted)
    changed = (tokenizer.quantizer.embedding.weight != before).any(dim=1)
    assert int(changed.sum()) == int(logs["restarted"])


def test_quantizer_warm_up_decodes_continuous_latents_then_quantises_and_resumes_its_count(tmp_path):
    tokenizer = tiny_tokenizer(quantizer_warmup_steps=2).train()
    z = torch.randn(2, 8, 8)
    outputs = [tokenizer.quantizer(z, track_usage=True) for _ in range(3)]
    assert torch.equal(outputs[0].latents_BNC, z) and torch.equal(outputs[1].latents_BNC, z)
    assert not torch.allclose(outputs[2].latents_BNC, z)  # the third call quantises
    assert outputs[0].vq_loss > 0  # the codebook follows the latents meanwhile
    assert not torch.allclose(tokenizer.quantizer(z).latents_BNC, z)  # encode (no tracking) always quantises
    tokenizer.save_pretrained(tmp_path)
    assert int(VariationalShapeTokenizer.from_pretrained(tmp_path).quantizer.training_calls) == 3
    assert "quantizer.training_calls" not in tiny_tokenizer().state_dict()  # absent without a warm-up


# ---- saving --------------------------------------------------------------------------------------------
def test_save_and_load_round_trip(tmp_path):
    tokenizer = trained_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    loaded = VariationalShapeTokenizer.from_pretrained(tmp_path).eval()
    assert loaded.cfg == tokenizer.cfg and loaded.cfg.scales == SCALES
    grids = solids(2, seed=9)
    ids = tokenizer.encode(grids)
    assert all(torch.equal(a, b) for a, b in zip(ids, loaded.encode(grids)))
    assert torch.equal(loaded.decode(ids), tokenizer.decode(ids))


# ---- bad input -----------------------------------------------------------------------------------------
def _bad_grid(kind: str) -> torch.Tensor:
    grids = solids(2)
    if kind == "nan":
        grids[1, 0, 0, 0] = float("nan")
    if kind == "empty":
        grids[1] = 0
    if kind == "range":
        grids = grids * 2
    return {"rank": grids[0], "cubic": grids[:, :, :, :8], "resolution": solids(2, resolution=8)}.get(kind, grids)


@pytest.mark.parametrize("kind, fragment", [
    ("rank", r"x must be an occupancy grid \[B, 16, 16, 16\] or a point cloud \[B, N, 3\].*x\[None\]"),
    ("cubic", "x must be a cubic grid"),
    ("resolution", "x must have resolution 16"),
    ("nan", "x holds NaN"),
    ("empty", r"x\[1\] is an empty shape"),
    ("range", r"x must hold occupancy in \[0, 1\]"),
])
def test_bad_grids_raise_naming_the_argument(kind, fragment):
    with pytest.raises(ValueError, match=fragment):
        tiny_tokenizer().encode(_bad_grid(kind))


def test_bad_points_ids_and_loss_inputs_raise_naming_the_argument():
    tokenizer = tiny_tokenizer()
    points = torch.rand(2, 10, 3) * 2 - 1
    nan = points.clone()
    nan[0, 3, 1] = float("nan")
    for bad, fragment in ((nan, "x holds NaN"), (points * 3, r"x must lie in \[-1, 1\]"),
                          (points[..., :2], r"or a point cloud \[B, N, 3\], got shape \(2, 10, 2\)$"), (points[:, :0], r"x\[0\] is an empty shape")):
        with pytest.raises(ValueError, match=fragment):
            tokenizer.encode(bad)
    with pytest.raises(TypeError, match="x must be a float tensor"):
        tokenizer.encode(points.long())
    with pytest.raises(ValueError, match="shapes_BRRR must have resolution 16"):
        tokenizer.loss(solids(2, resolution=8))
    ids = tokenizer.encode(solids(2))
    with pytest.raises(ValueError, match=r"flat ids must have shape \[B, 15\]"):
        tokenizer.decode(torch.cat(ids, dim=1)[:, :-1])
    with pytest.raises(ValueError, match=r"ids\[2\] must have shape \[B, 4\]"):
        tokenizer.decode([ids[0], ids[1], ids[3], ids[3]])
    with pytest.raises(ValueError, match="outside the codebook"):
        tokenizer.decode([ids[0] + 64, *ids[1:]])
    with pytest.raises(ValueError, match="points_BQ3 holds NaN"):
        tokenizer.decode_points(ids, nan)
    with pytest.raises(ValueError, match="ids_BL"):
        tokenizer.teacher_context(torch.cat(ids, dim=1)[:, :3])


@pytest.mark.parametrize("overrides, fragment", [
    (dict(scales=(1, 2, 4)), "scales\\[-1\\]=4 must equal num_latents=8"),
    (dict(scales=(2, 1, 8)), "scales must be strictly increasing"),
    (dict(scales=(8,)), "scales must name at least two scales"),
    (dict(width=31), "width=31 must be divisible by heads=2"),
    (dict(codebook_size=1), "codebook_size must be an int >= 2"),
    (dict(kl_weight=-1.0), "kl_weight must be >= 0"),
    (dict(refine_ratio=1.5), "refine_ratio must lie in"),
    (dict(resolution=0), "resolution must be an int >= 1"),
    (dict(quantizer_warmup_steps=-1), "quantizer_warmup_steps must be an int >= 0"),
])
def test_bad_config_values_raise_naming_the_field(overrides, fragment):
    with pytest.raises(ValueError, match=fragment):
        tiny_config(**overrides)
