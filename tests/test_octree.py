"""Octree tokens (mmgen.octree, OctreeTokenizer) and their generation through the engine, by level and by token."""

from __future__ import annotations

import pytest
import torch

from mmgen.octree import decode_octree, encode_octree, octree_capacity, octree_nodes
from mmgen.sampling import SamplingConfig
from pipelines import NextScalePipeline, NextTokenPipeline
from tests.pipeline_fixtures import build, count_gpt_forwards, gen, sequence_of, teacher_forced_hidden
from tokenizers_visual import OctreeTokenizer

R = 8  # 3 levels: tiny trees keep the engine tests fast


def blobs(batch_size: int, *, side: int = R, seed: int = 0) -> torch.Tensor:
    """Random 0/1 grids of about a third occupied, none empty."""
    grids = (torch.rand(batch_size, side, side, side, generator=torch.Generator().manual_seed(seed)) < 0.3).float()
    grids[:, 0, 0, 0] = 1.0
    return grids


def ball(side: int, radius: float) -> torch.Tensor:
    c = (torch.arange(side) + 0.5) / side * 2 - 1
    x, y, z = torch.meshgrid(c, c, c, indexing="ij")
    return (x**2 + y**2 + z**2 < radius**2).float()


# ---- the tokens ---------------------------------------------------------------------------------
def test_round_trip_is_exact_and_lengths_are_per_shape():
    tokenizer = OctreeTokenizer({"resolution": 16})
    grids = torch.cat([blobs(6, side=16), torch.stack([ball(16, 0.4), ball(16, 0.9)])])
    ids = tokenizer.encode(grids)
    assert torch.equal(tokenizer.decode(ids), grids)
    lengths = tokenizer.lengths(ids)
    assert lengths[6] < lengths[7] < ids.shape[1] + 1  # a bigger ball has more nodes
    assert bool((ids[torch.arange(ids.shape[1]) >= lengths.unsqueeze(1)] == 0).all())  # padding after each tree
    assert bool((ids[torch.arange(ids.shape[1]) < lengths.unsqueeze(1)] > 0).all())  # occupied nodes have children


def test_tokens_are_child_masks_level_by_level_in_morton_order():
    grid = torch.zeros(4, 4, 4)
    grid[3, 0, 1] = grid[0, 0, 0] = 1  # cells (1, 0, 0) and (0, 0, 0) of the 2-grid: children 4 and 0 of the root
    ids = encode_octree(grid)
    assert ids.tolist() == [1 | 16, 1, 1 << (4 * 1 + 2 * 0 + 1)]  # root; cell (0,0,0): voxel 0; cell (1,0,0): voxel (1,0,1)
    nodes = octree_nodes(ids, 2)
    assert nodes.level_N.tolist() == [0, 1, 1]
    assert nodes.cells_N3.tolist() == [[0, 0, 0], [0, 0, 0], [1, 0, 0]]
    assert nodes.child_N.tolist() == [0, 0, 4] and nodes.parent_N.tolist() == [0, 17, 17]
    full = encode_octree(torch.ones(8, 8, 8))
    assert full.tolist() == [255] * octree_capacity(3)


def test_points_are_voxelised_into_the_cells_they_fall_in():
    tokenizer = OctreeTokenizer({"resolution": 8})
    points = torch.tensor([[[-0.99, -0.99, -0.99], [0.99, 0.99, 0.99], [0.1, -0.1, 0.6]]])
    grid = tokenizer.decode(tokenizer.encode(points))[0]
    assert grid.sum() == 3 and grid[0, 0, 0] == 1 and grid[7, 7, 7] == 1 and grid[4, 3, 6] == 1


@pytest.mark.parametrize("bad, message", [
    (torch.ones(1, 8, 8, 4), r"occupancy grids \[B, 8, 8, 8\]"),
    (torch.zeros(1, 8, 8, 8), "empty"),
    (torch.full((1, 4, 3), float("nan")), "NaN"),
    (torch.full((1, 4, 3), 2.0), r"\[-1, 1\]"),
])
def test_bad_shapes_are_refused_with_what_was_expected(bad, message):
    with pytest.raises(ValueError, match=message):
        OctreeTokenizer({"resolution": 8}).encode(bad)


@pytest.mark.parametrize("bad, message", [(torch.ones(8, 8, 4), "cubic"), (torch.ones(6, 6, 6), "power of two"),
                                          (torch.full((4, 4, 4), float("nan")), "NaN")])
def test_the_library_names_what_a_grid_must_be(bad, message):
    with pytest.raises(ValueError, match=message):
        encode_octree(bad)


def test_bad_ids_are_refused():
    tokenizer = OctreeTokenizer({"resolution": 8})
    ids = tokenizer.encode(blobs(1))
    with pytest.raises(ValueError, match="outside codebook"):
        tokenizer.decode(torch.full_like(ids, 256))
    with pytest.raises(ValueError, match="end before the octree"):
        tokenizer.decode(ids[:, :3])
    with pytest.raises(ValueError, match="after the octree ends"):
        tokenizer.decode(torch.cat([ids, torch.ones(1, 1, dtype=torch.long)], dim=1))
    with pytest.raises(ValueError, match="power of two"):
        OctreeTokenizer({"resolution": 12})


def test_tokenizer_saves_as_config_only(tmp_path):
    OctreeTokenizer({"resolution": 16}).save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    assert OctreeTokenizer.from_pretrained(tmp_path).cfg.resolution == 16


# ---- generation through the engine -------------------------------------------------------------
PIPELINES = {"level": NextScalePipeline, "token": NextTokenPipeline}


def octree_pipeline(by: str):
    return build(PIPELINES[by], OctreeTokenizer({"resolution": R}))


@pytest.mark.parametrize("by", ["level", "token"])
def test_generated_trees_always_decode_and_rows_stop_on_their_own(by):
    pipe = octree_pipeline(by)
    out = pipe(class_labels=[0, 1, 2, 3], generator=gen(0), output_type="tokens")
    grids = pipe.tokenizer.decode(out.tokens)  # raises if a row is not a whole tree
    lengths = pipe.tokenizer.lengths(out.tokens)
    assert grids.shape == (4, R, R, R) and len(set(lengths.tolist())) > 1


@pytest.mark.parametrize("by", ["level", "token"])
def test_by_level_is_one_forward_per_level_and_by_token_one_per_node(by):
    pipe = octree_pipeline(by)
    calls = count_gpt_forwards(pipe)
    ids = pipe(class_labels=[2], generator=gen(1), output_type="tokens").tokens
    nodes = pipe.tokenizer.nodes(ids[0])
    assert len(calls) == (len(set(nodes.level_N.tolist())) if by == "level" else nodes.length)
    if by == "level":  # each forward is the whole next level: the children of the cells drawn before
        assert calls[1:] == torch.bincount(nodes.level_N)[1:].tolist()


@pytest.mark.parametrize("by", ["level", "token"])
def test_greedy_generation_is_the_argmax_of_the_training_forward(by):
    pipe = octree_pipeline(by)
    ids = pipe(class_labels=[1, 4], generator=gen(2), output_type="tokens", top_k=1).tokens
    seq = sequence_of(pipe, ids)
    hidden = teacher_forced_hidden(pipe, seq, class_labels=torch.tensor([1, 4]))
    argmax = pipe.head.sample(hidden, sampling=SamplingConfig(top_k=1), guidance_scale=1.0,
                              seeds_Bn=torch.zeros(2, hidden.shape[1], dtype=torch.long))
    for b, length in enumerate(pipe.tokenizer.lengths(ids).tolist()):
        assert torch.equal(argmax[b, :length], ids[b, :length])


@pytest.mark.parametrize("by", ["level", "token"])
def test_a_sample_does_not_depend_on_its_batch(by):
    pipe = octree_pipeline(by)
    pipe.register_to_config(null_condition_trained=True)  # guided rows and their null rows share each group's slots
    together = pipe(class_labels=[0, 3], generator=[gen(5), gen(6)], output_type="tokens", guidance_scale=2.0).tokens
    alone = pipe(class_labels=[3], generator=[gen(6)], output_type="tokens", guidance_scale=2.0).tokens
    n = int(pipe.tokenizer.lengths(alone)[0])
    assert torch.equal(together[1, :n], alone[0, :n])


@pytest.mark.parametrize("by", ["level", "token"])
def test_training_fits_a_few_shapes_and_saved_pipelines_sample_the_same(by, tmp_path):
    pipe = octree_pipeline(by)
    grids = torch.stack([ball(R, 0.5), ball(R, 0.9)])
    seq = pipe.tokenize(grids)
    labels = torch.tensor([0, 1])
    params = [p for m in (pipe.gpt, pipe.head, pipe.conditioner) for p in m.parameters()]
    optimiser = torch.optim.AdamW(params, lr=1e-2)
    first = None
    for _ in range(40):
        loss, _ = pipe.loss(seq, class_labels=labels, cond_drop_prob=0.0, generator=torch.Generator().manual_seed(0))
        first = loss.item() if first is None else first
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.2 * first
    greedy = pipe(class_labels=[0, 1], generator=gen(0), output_type="tokens", top_k=1).tokens
    assert torch.equal(pipe.tokenizer.decode(greedy), grids)
    pipe.save_pretrained(tmp_path)
    again = type(pipe).from_pretrained(tmp_path)
    again.set_progress_bar_config(disable=True)
    assert torch.equal(again(class_labels=[0, 1], generator=gen(0), output_type="tokens", top_k=1).tokens, greedy)


def test_octree_options_of_other_grids_are_refused():
    with pytest.raises(ValueError, match="num_tokens"):
        NextTokenPipeline.plan(OctreeTokenizer({"resolution": R}), num_tokens=3)


def test_decode_octree_takes_one_sequence():
    with pytest.raises(ValueError, match=r"one sequence \[L\]"):
        decode_octree(torch.ones(2, 3, dtype=torch.long), 2)


def test_train_an_octree_generator_from_a_config_then_generate_meshes(tmp_path, capsys):
    """`tokenizer:` may be the preset of a tokenizer with nothing to learn; `mmgen generate` writes meshes and previews."""
    import json

    import trimesh
    import yaml

    from mmgen.app.cli import main

    config = tmp_path / "octree.yaml"
    config.write_text(yaml.safe_dump({
        "kind": "generator", "pipeline": "NextScalePipeline", "tokenizer": {"class": "OctreeTokenizer", "resolution": 16},
        "output_dir": str(tmp_path / "run"), "threads": 1, "log_every": 1, "gpt": {"dim": 32, "n_layers": 1, "n_heads": 2},
        "data": {"dataset": "primitives", "resolution": 16, "num_items": 16}, "optim": {"steps": 2, "batch_size": 4},
        "eval": {"samples_per_class": 2, "batch_size": 10},
    }))
    assert main(["train", str(config)]) == 0
    report = json.loads((tmp_path / "run" / "eval.json").read_text())["eval"]
    assert report["num_samples"] == 10 and len(report["per_class"]) == 5 and 0.0 <= report["watertight"] <= 1.0
    assert (tmp_path / "run" / "samples.png").is_file()
    assert sorted(p.name for p in (tmp_path / "run" / "pipeline" / "tokenizer").iterdir()) == ["config.json"]
    out = tmp_path / "meshes"
    assert main(["generate", str(tmp_path / "run" / "pipeline"), "--prompt", "a torus", "--num-samples", "2",
                 "--mesh-format", "obj", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["modality"] == "shape" and len(manifest["samples"]) == 2
    sample = manifest["samples"][0]
    assert sample["file"].endswith(".obj") and (out / sample["preview"]).is_file()
    assert isinstance(trimesh.load(out / sample["file"], force="mesh"), trimesh.Trimesh)
    capsys.readouterr()
    assert main(["info", str(tmp_path / "run" / "pipeline")]) == 0
    assert "tokenizer: OctreeTokenizer, no weights (it learns nothing)" in capsys.readouterr().out
