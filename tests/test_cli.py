"""The mmgen command line: generate, info and tokenize on tiny components saved into tmp_path.

Errors exit non-zero with a message naming the problem; `info` reads headers only and never unpickles;
`generate` is reproducible per seed and never overwrites unless asked; `tokenize` writes shards that
`train` reads.
"""

from __future__ import annotations

import json
import math
import pickle
import shutil
from pathlib import Path

import PIL.Image
import pytest
import torch

from safetensors.torch import load_file, save_file

from mmgen.app.cli import main
from mmgen.app.training.data import load_token_shards, save_token_shards
from mmgen.conditioning import ClassConditioner, ClassConditionerConfig
from mmgen.data import ShapesDataset, caption
from mmgen.hub import WEIGHTS_NAME
from pipelines import NextTokenPipeline
from tokenizers_visual import KLConfig, KLImageTokenizer, VQConfig, VQImageTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NUM_CLASSES = 21
CLASS_NAMES = [caption(c) for c in range(NUM_CLASSES)]
COMMANDS = ["demo", "train", "tokenize", "generate", "info", "upgrade"]
COMPONENTS = ("gpt", "tokenizer", "head", "conditioner")


# ---- tiny saved components -----------------------------------------------------------------------------
def vq_tokenizer() -> VQImageTokenizer:
    torch.manual_seed(0)
    return VQImageTokenizer(VQConfig(image_size=16, downsample=4, channels=8, channel_mult=[1, 1, 1],
                                     z_channels=8, codebook_size=32, codebook_dim=4))


def tiny_pipeline(tokenizer: VQImageTokenizer) -> NextTokenPipeline:
    torch.manual_seed(1)
    conditioner = ClassConditioner(ClassConditionerConfig(dim=32, num_classes=NUM_CLASSES))
    torch.nn.init.normal_(conditioner.embedding.weight, std=1.0)
    pipe = NextTokenPipeline.from_tokenizer(tokenizer, conditioner=conditioner, gpt={"dim": 32, "n_layers": 1, "n_heads": 2},
                                            class_names=CLASS_NAMES, null_condition_trained=True)
    assert pipe.gpt.cfg.max_seq_len == 17  # the class prefix and the 4x4 grid
    return pipe


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A saved pipeline (and a copy not trained with a null condition) and a saved tokenizer, with true parameter counts."""
    root = tmp_path_factory.mktemp("saved")
    tokenizer = vq_tokenizer()
    pipe = tiny_pipeline(tokenizer)
    pipe.save_pretrained(str(root / "pipe"))
    pipe.register_to_config(null_condition_trained=False)
    pipe.save_pretrained(str(root / "pipe_no_null"))
    tokenizer.save_pretrained(str(root / "tok"))
    pipe.register_to_config(null_condition_trained=True)
    pipe.to(torch.float16).save_pretrained(str(root / "pipe_half"))  # as the shipped checkpoints are stored
    params = {f"{name}_params": sum(p.numel() for p in getattr(pipe, name).parameters()) for name in COMPONENTS}
    return {"pipe": root / "pipe", "pipe_no_null": root / "pipe_no_null", "pipe_half": root / "pipe_half", "tok": root / "tok",
            **params}


def write_config(path: Path, tokenizer: Path, output_dir: Path, **extra: str) -> Path:
    """A tiny generator run config (YAML flow mappings); ``extra`` adds or replaces top-level keys."""
    keys = {
        "kind": "generator", "pipeline": "NextTokenPipeline", "tokenizer": str(tokenizer),
        "gpt": "{dim: 32, n_layers: 1, n_heads: 2}",
        "data": "{dataset: shapes, image_size: 16, num_items: 64}",
        "optim": "{steps: 2, batch_size: 8}", "eval": "{samples_per_class: 1}", "checkpoint": "{every: 1}",
        "log_every": "1", "output_dir": str(output_dir), **extra,
    }
    path.write_text("".join(f"{k}: {v}\n" for k, v in keys.items()))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, saved: dict) -> dict:
    """tokenize a config's shapes into shards, then train 2 steps from the shards (with a checkpoint at step 1)."""
    root = tmp_path_factory.mktemp("run")
    config = write_config(root / "gen.yaml", saved["tok"], root / "run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tokenize_rc = main(["tokenize", str(config), "--shard-size", "20", "--device", "cpu"])
        from_shards = write_config(root / "from_shards.yaml", saved["tok"], root / "run",
                                   data=f"{{dataset: shapes, image_size: 16, num_items: 64, tokens: {root / 'run' / 'tokens'}}}")
        train_rc = main(["train", str(from_shards)])
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "config": config, "run": root / "run", "tokens": root / "run" / "tokens",
            "tokenize_rc": tokenize_rc, "train_rc": train_rc}


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to unpickle fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)


def generate(saved: dict, out: Path, *args: str) -> int:
    return main(["generate", str(saved["pipe"]), "--out", str(out), "--device", "cpu", *args])


# ---- the parser (demo: tests/test_demo.py) ---------------------------------------------------------------------------------
def test_unknown_command_is_rejected():
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"mmgen {command} " in out.split("example:")[1]


# ---- generate --------------------------------------------------------------------------------------------
def test_generate_writes_pngs_and_a_manifest(saved, tmp_path, capsys):
    out = tmp_path / "samples"
    assert generate(saved, out, "--prompt", "a red circle", "--prompt", "A Blue  Square", "--num-samples", "2",
                    "--seed", "5", "--guidance-scale", "2") == 0
    assert str(out) in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    images = manifest["samples"]
    assert [i["prompt"] for i in images] == ["a red circle"] * 2 + ["A Blue  Square"] * 2
    assert [i["class_id"] for i in images] == [CLASS_NAMES.index("a red circle")] * 2 + [CLASS_NAMES.index("a blue square")] * 2
    assert [i["seed"] for i in images] == [5, 6, 7, 8]
    assert all(i["seconds"] > 0 for i in images)
    assert manifest["options"]["guidance_scale"] == 2.0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(i["file"] for i in images) and len(pngs) == 4
    assert all(f"seed{i['seed']}" in i["file"] for i in images)
    with PIL.Image.open(out / images[0]["file"]) as image:
        assert image.format == "PNG" and image.size == (16, 16)


def test_generate_class_labels_and_unconditional(saved, tmp_path):
    assert generate(saved, tmp_path / "labels", "--class-label", "3", "--class-label", "20") == 0
    labelled = json.loads((tmp_path / "labels" / "manifest.json").read_text())["samples"]
    assert [(i["class_id"], i["prompt"]) for i in labelled] == [(3, None), (20, None)]
    assert generate(saved, tmp_path / "free", "--num-samples", "3") == 0
    free = json.loads((tmp_path / "free" / "manifest.json").read_text())["samples"]
    assert [(i["class_id"], i["prompt"]) for i in free] == [(None, None)] * 3
    assert len(list((tmp_path / "free").glob("*.png"))) == 3


def test_same_seed_gives_identical_png_bytes(saved, tmp_path):
    args = ("--class-label", "4", "--num-samples", "3")
    assert generate(saved, tmp_path / "a", *args, "--seed", "11") == 0
    assert generate(saved, tmp_path / "b", *args, "--seed", "11", "--batch-size", "2") == 0
    assert generate(saved, tmp_path / "c", *args, "--seed", "12") == 0

    def by_seed(folder: str) -> dict[int, bytes]:
        manifest = json.loads((tmp_path / folder / "manifest.json").read_text())["samples"]
        return {i["seed"]: (tmp_path / folder / i["file"]).read_bytes() for i in manifest}

    a, b, c = by_seed("a"), by_seed("b"), by_seed("c")
    assert a == b
    assert (a[12], a[13]) == (c[12], c[13])  # an image depends on its own seed, not on its place in the run
    assert a[11] not in c.values()


def test_generate_refuses_to_overwrite(saved, tmp_path, capsys):
    out = tmp_path / "samples"
    assert generate(saved, out, "--class-label", "1", "--seed", "0") == 0
    png = next(out.glob("*.png"))
    png.write_bytes(b"keep me")
    capsys.readouterr()
    assert generate(saved, out, "--class-label", "1", "--seed", "0") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert png.read_bytes() == b"keep me"
    assert generate(saved, out, "--class-label", "1", "--seed", "0", "--overwrite") == 0
    assert png.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("case, message", [
    ("missing folder", "does not exist"),
    ("tokenizer folder", "model_index.json"),
    ("unknown prompt", "not one of the class names"),
    ("class out of range", "unknown class id 99"),
    ("out is a file", "is a file"),
    ("flow steps without a head", "--num-flow-steps"),
    ("guidance without a null condition", "null_condition_trained is False"),
])
def test_generate_bad_input_exits_2_with_a_message(saved, tmp_path, capsys, case, message):
    out = tmp_path / "samples"
    pipe = str(saved["pipe"])
    argv = {
        "missing folder": [str(tmp_path / "nope")],
        "tokenizer folder": [str(saved["tok"])],
        "unknown prompt": [pipe, "--prompt", "a pink dog"],
        "class out of range": [pipe, "--class-label", "99"],
        "out is a file": [pipe],
        "flow steps without a head": [pipe, "--num-flow-steps", "4"],
        "guidance without a null condition": [str(saved["pipe_no_null"]), "--class-label", "1", "--guidance-scale", "3"],
    }[case]
    if case == "out is a file":
        out.write_text("not a folder")
    assert main(["generate", *argv, "--out", str(out), "--device", "cpu"]) == 2
    assert message in capsys.readouterr().err
    assert not out.is_dir()  # nothing written


def test_generate_rejects_prompt_with_class_label(saved):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", str(saved["pipe"]), "--prompt", "a red circle", "--class-label", "0"])
    assert exit_info.value.code == 2


# ---- info ------------------------------------------------------------------------------------------------
def info_json(path: Path, capsys) -> dict:
    assert main(["info", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.usefixtures("no_unpickling")
def test_info_pipeline_reports_classes_config_and_true_parameter_counts(saved, capsys):
    info = info_json(saved["pipe"], capsys)
    assert info["kind"] == "pipeline" and info["class"] == "NextTokenPipeline"
    assert info["config"]["class_names"] == CLASS_NAMES and info["config"]["null_condition_trained"] is True
    assert "upgrade" not in info
    components = info["components"]
    assert {name: c["class"] for name, c in components.items()} == {
        "gpt": "GPT", "tokenizer": "VQImageTokenizer", "head": "CategoricalHead", "conditioner": "ClassConditioner"}
    for name in COMPONENTS:
        assert components[name]["weights"]["parameters"] == saved[f"{name}_params"], name
        assert components[name]["weights"]["missing_parameters"] == []
    gpt, tok = components["gpt"], components["tokenizer"]
    assert tok["weights"]["buffer_elements"] > 0  # the VQ usage statistics are counted apart from parameters
    assert info["parameters"] == sum(saved[f"{name}_params"] for name in COMPONENTS)
    assert gpt["weights"]["parameter_dtypes"] == ["float32"]
    weights_file = saved["pipe"] / "gpt" / "diffusion_pytorch_model.safetensors"
    assert {"name": weights_file.name, "kind": "safetensors", "bytes": weights_file.stat().st_size} in gpt["files"]
    assert main(["info", str(saved["pipe"])]) == 0
    text = capsys.readouterr().out
    assert "NextTokenPipeline" in text and "null_condition_trained: True" in text and "21 items" in text
    assert all(f"{saved[name + '_params']:,} parameters" in text for name in COMPONENTS)


@pytest.mark.usefixtures("no_unpickling")
def test_info_model_folder(saved, capsys):
    info = info_json(saved["tok"], capsys)
    assert info["kind"] == "model" and info["class"] == "VQImageTokenizer"
    assert info["config"]["codebook_size"] == 32
    assert info["weights"]["parameters"] == saved["tokenizer_params"] and info["weights"]["missing_parameters"] == []
    assert main(["info", str(saved["tok"])]) == 0
    text = capsys.readouterr().out
    assert "VQImageTokenizer" in text and f"{saved['tokenizer_params']:,} parameters" in text and "codebook_size: 32" in text


def test_info_lists_pickle_files_without_loading_them(saved, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "tok"
    shutil.copytree(saved["tok"], folder)
    torch.save({"weights": torch.zeros(2)}, folder / "pytorch_model.bin")
    pickle_only = tmp_path / "pickle_only"
    pickle_only.mkdir()
    shutil.copy(folder / "config.json", pickle_only)
    shutil.copy(folder / "pytorch_model.bin", pickle_only)
    attempts = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: attempts.append(a))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: attempts.append(a))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: attempts.append(a))
    info = info_json(folder, capsys)
    assert {"name": "pytorch_model.bin", "kind": "pickle (not loaded)"}.items() <= next(
        f for f in info["files"] if f["name"] == "pytorch_model.bin").items()
    assert info["weights"]["parameters"] == saved["tokenizer_params"]
    assert main(["info", str(pickle_only)]) == 0
    text = capsys.readouterr().out
    assert "pytorch_model.bin: pickle (not loaded)" in text and "no safetensors weights" in text
    assert attempts == []


@pytest.mark.usefixtures("no_unpickling")
def test_info_training_run_lists_checkpoints_and_eval(trained, saved, capsys):
    info = info_json(trained["run"], capsys)
    assert info["kind"] == "training_run"
    assert [c["step"] for c in info["checkpoints"]] == [1]
    kinds = {f["name"]: f["kind"] for f in info["checkpoints"][0]["files"]}
    assert kinds["model.safetensors"] == "safetensors" and "pickle (not loaded)" in kinds.values()
    assert info["eval"]["steps"] == 2 and "adherence" in info["eval"]["eval"]
    assert info["last_metrics"]["step"] == 2
    exported = info["exported"]["pipeline"]["components"]
    trained_parts = ("gpt", "head", "conditioner")  # the tokenizer is frozen
    assert sum(exported[name]["weights"]["parameters"] for name in trained_parts) == info["eval"]["parameters"]
    assert info["exported"]["tokens"]["index"]["num_items"] == 64
    assert main(["info", str(trained["run"])]) == 0
    text = capsys.readouterr().out
    assert "checkpoints: step 1" in text and "eval.adherence" in text and "optimizer.bin: pickle (not loaded)" in text
    assert main(["info", str(trained["run"] / "checkpoints" / "step-00000001")]) == 0
    assert "step 1" in capsys.readouterr().out


def test_info_bad_input_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"_class_name": "VQImageTokenizer"}))
    (broken / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 12)
    for path, message in [(tmp_path / "nope", "does not exist"), (tmp_path / "empty", "is not a checkpoint"),
                          (tmp_path / "file.txt", "is a file"), (broken, "not a readable safetensors file")]:
        assert main(["info", str(path)]) == 2
        assert message in capsys.readouterr().err


# ---- tokenize --------------------------------------------------------------------------------------------
def test_tokenize_writes_shards_that_train_reads(trained, saved):
    assert trained["tokenize_rc"] == 0 and trained["train_rc"] == 0
    index = json.loads((trained["tokens"] / "tokens.json").read_text())
    assert index["num_items"] == 64 and len(index["shards"]) == 4  # 20 + 20 + 20 + 4
    assert index["pipeline"] == "NextTokenPipeline" and index["tokenizer"] == str(saved["tok"])
    tokens, labels, _ = load_token_shards(trained["tokens"])
    shapes = ShapesDataset(size=16, length=64, split="train", seed=0).batch(range(64))
    assert torch.equal(labels, torch.as_tensor(shapes["class_id"]))
    with torch.no_grad():
        assert torch.equal(tokens, vq_tokenizer().encode(shapes["image"]).flatten(1))
    losses = [json.loads(line)["loss"] for line in (trained["run"] / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)


def test_train_checks_the_paradigm_the_shards_were_extracted_for(trained, saved, tmp_path, capsys):
    other = write_config(tmp_path / "next_x.yaml", saved["tok"], tmp_path / "run", pipeline="NextXPipeline",
                         pipeline_args="{entity: token}",
                         data=f"{{dataset: shapes, image_size: 16, num_items: 64, tokens: {trained['tokens']}}}")
    assert main(["train", str(other)]) == 2
    assert "extracted for NextTokenPipeline" in capsys.readouterr().err
    tokens, labels, meta = load_token_shards(trained["tokens"])
    save_token_shards(tmp_path / "grid", tokens.view(-1, 4, 4), labels, shard_size=64, meta=meta)  # not this run's sequences
    grid = write_config(tmp_path / "grid.yaml", saved["tok"], tmp_path / "run2",
                        data=f"{{dataset: shapes, image_size: 16, num_items: 64, tokens: {tmp_path / 'grid'}}}")
    assert main(["train", str(grid)]) == 2
    assert "(4, 4); this run's NextTokenPipeline learns sequences of shape (16,)" in capsys.readouterr().err


def test_tokenize_continuous_tokens_store_latent_statistics(tmp_path):
    torch.manual_seed(0)
    KLImageTokenizer(KLConfig(image_size=16, downsample=4, channels=8, channel_mult=[1, 1, 1], latent_dim=4)).save_pretrained(str(tmp_path / "kl"))
    config = write_config(tmp_path / "x.yaml", tmp_path / "kl", tmp_path / "run", pipeline="NextXPipeline",
                          pipeline_args="{entity: cell, cell_size: 2, num_flow_steps: 2}", head="{width: 16, depth: 1}")
    assert main(["tokenize", str(config), "--device", "cpu"]) == 0
    tokens, _, meta = load_token_shards(tmp_path / "run" / "tokens")
    assert tokens.shape == (64, 16, 4) and tokens.is_floating_point()  # the sequence: 4x4 latents, 2x2 cells, 4 channels
    assert len(meta["latent_mean"]) == len(meta["latent_std"]) == 4
    per_channel = tokens.reshape(-1, 4).T  # fitted on these very images: unit scale per channel
    assert torch.allclose(per_channel.mean(1), torch.zeros(4), atol=1e-4)
    assert torch.allclose(per_channel.std(1), torch.ones(4), atol=1e-3)


def test_tokenize_errors_exit_2(trained, saved, tmp_path, capsys):
    assert main(["tokenize", str(trained["config"])]) == 2  # its default folder now holds shards
    assert "not an empty folder" in capsys.readouterr().err
    tokenizer_run = tmp_path / "tok.yaml"
    tokenizer_run.write_text("kind: tokenizer\ntokenizer: {class: VQImageTokenizer}\n")
    assert main(["tokenize", str(tokenizer_run)]) == 2
    assert "kind: generator" in capsys.readouterr().err
    typo = write_config(tmp_path / "typo.yaml", saved["tok"], tmp_path / "run", optimm="{steps: 2}")
    assert main(["tokenize", str(typo)]) == 2
    assert "optimm" in capsys.readouterr().err
    assert main(["tokenize", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---- upgrade ---------------------------------------------------------------------------------------------
def write_old_format(new: Path, old: Path) -> None:
    """Rewrite a saved class-conditional NextTokenPipeline in the layout mmgen saved before the engine refactor.

    Then the GPT held the class table and the output layer (``class_embedding``, ``heads.0``) and its config
    ``num_classes`` / ``text_max_len`` / ``tie_embeddings``; there were no conditioner and head components
    (compare checkpoints/shapes32/next-token of that release).
    """
    shutil.copytree(new, old, ignore=shutil.ignore_patterns("conditioner", "head"))
    index = json.loads((old / "model_index.json").read_text())
    for key in ("conditioner", "head", "codebook_pattern"):
        del index[key]
    (old / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
    num_classes = json.loads((new / "conditioner" / "config.json").read_text())["num_classes"]
    gpt_config = json.loads((old / "gpt" / "config.json").read_text())
    (old / "gpt" / "config.json").write_text(json.dumps({**gpt_config, "num_classes": num_classes, "text_max_len": 0,
                                                         "tie_embeddings": False}, indent=2, sort_keys=True))
    weights = load_file(str(old / "gpt" / WEIGHTS_NAME))
    weights["class_embedding.weight"] = load_file(str(new / "conditioner" / WEIGHTS_NAME))["embedding.weight"]
    weights["heads.0.weight"] = load_file(str(new / "head" / WEIGHTS_NAME))["projections.0.weight"]
    save_file(weights, str(old / "gpt" / WEIGHTS_NAME), metadata={"format": "pt"})


@pytest.fixture(params=["pipe", "pipe_half"])
def source(request, saved) -> Path:
    """A saved new-format pipeline, in float32 or float16."""
    return saved[request.param]


@pytest.fixture
def old_folder(source, tmp_path) -> Path:
    write_old_format(source, tmp_path / "old")
    return tmp_path / "old"


def test_upgrade_converts_an_old_pipeline_that_generates_the_same_images(source, old_folder, tmp_path, capsys):
    with pytest.raises(ValueError, match=f"mmgen upgrade {old_folder} NEW_FOLDER"):
        NextTokenPipeline.from_pretrained(old_folder)
    assert main(["generate", str(old_folder), "--out", str(tmp_path / "refused"), "--device", "cpu"]) == 2
    assert "mmgen upgrade" in capsys.readouterr().err and not (tmp_path / "refused").exists()
    assert "mmgen upgrade" in info_json(old_folder, capsys)["upgrade"]

    new = tmp_path / "new"
    assert main(["upgrade", str(old_folder), str(new)]) == 0
    assert str(new) in capsys.readouterr().out
    assert (old_folder / "model_index.json").is_file() and not (old_folder / "conditioner").exists()  # OLD left as it was
    for name in COMPONENTS:  # the weights keep their dtype
        want, got = load_file(str(source / name / WEIGHTS_NAME)), load_file(str(new / name / WEIGHTS_NAME))
        assert {k: v.dtype for k, v in got.items()} == {k: v.dtype for k, v in want.items()}, name
    original, upgraded = NextTokenPipeline.from_pretrained(source), NextTokenPipeline.from_pretrained(new)
    assert upgraded.config.class_names == CLASS_NAMES and upgraded.config.null_condition_trained is True
    for name in COMPONENTS:
        want, got = getattr(original, name).state_dict(), getattr(upgraded, name).state_dict()
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want), name
    for pipe in (original, upgraded):
        pipe.set_progress_bar_config(disable=True)

    def draw(pipe: NextTokenPipeline) -> tuple:
        out = pipe(class_labels=[3, 3, 20], guidance_scale=2.0, output_type="pt",
                   generator=[torch.Generator().manual_seed(s) for s in (0, 1, 2)])
        return out.images, out.tokens

    (images_a, tokens_a), (images_b, tokens_b) = draw(original), draw(upgraded)
    assert torch.equal(tokens_a, tokens_b) and torch.equal(images_a, images_b)
    assert not torch.equal(tokens_a[0], tokens_a[1])  # the seeds matter, so equal tokens are no accident


@pytest.mark.parametrize("source", ["pipe"], indirect=True)
def test_upgrade_refuses_to_overwrite_and_bad_input_exits_2(saved, old_folder, tmp_path, capsys):
    new = tmp_path / "new"
    new.mkdir()
    (new / "keep.txt").write_text("mine")
    assert main(["upgrade", str(old_folder), str(new)]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and err.count("\n") == 1
    assert sorted(p.name for p in new.iterdir()) == ["keep.txt"]
    assert main(["upgrade", str(old_folder), str(new), "--overwrite"]) == 0
    assert not (new / "keep.txt").exists() and NextTokenPipeline.from_pretrained(new).config.class_names == CLASS_NAMES
    capsys.readouterr()
    for old in (saved["pipe"], tmp_path / "missing", saved["tok"]):  # already new, absent, not a pipeline
        assert main(["upgrade", str(old), str(tmp_path / "other")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("mmgen upgrade: error: ") and "old format" in err and err.count("\n") == 1
    assert not (tmp_path / "other").exists()
