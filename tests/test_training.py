"""What the trainer promises a user: exact resumes after a crash, data parallelism that really synchronises,
checkpoints that are verified before use, configs that name the key at fault, periodic evaluation.

Tiny models only (a 4x4-grid VQ tokenizer at 16 px, a one-layer GPT of width 32), a handful of steps on
the CPU. Runs that must be separate processes (a SIGKILLed run, the CLI resume, two torchrun ranks) are
subprocesses with one thread each; the rest runs in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.utils import is_tensorboard_available

from mmgen.app.cli import main
from mmgen.app.training import Trainer, list_checkpoints, load_config
from mmgen.app.training.config import TrainConfig, config_from_mapping
from mmgen.app.training.data import StepBatches, TokenSource, batch_indices, length_grouped_indices, step_batches
from mmgen.app.training.trainer import lr_factor
from tokenizers_visual import KLConfig, KLImageTokenizer
from training_fixtures import (
    REPO,
    folder_digest,
    generator_config,
    losses,
    records,
    report,
    tokenizer_config,
    write_config,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ---- helpers -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kl_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny continuous (KL) tokenizer folder for a NextX generator with a flow head."""
    folder = tmp_path_factory.mktemp("kl")
    torch.manual_seed(0)
    KLImageTokenizer(KLConfig(image_size=16, downsample=4, channels=8, channel_mult=[1, 1, 1], latent_dim=4)).save_pretrained(str(folder))
    return folder


def run_python(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


class Interrupted(Exception):
    pass


def interrupt_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Make the next Trainer stop with an exception when ``step`` begins (an in-process crash)."""
    train_step = Trainer._train_step

    def stopping(self: Trainer, batch: tuple) -> dict[str, float]:
        if self.step == step:
            raise Interrupted
        return train_step(self, batch)

    monkeypatch.setattr(Trainer, "_train_step", stopping)


# ---- resume -------------------------------------------------------------------------------------------
def test_generator_killed_between_checkpoints_resumes_with_identical_losses(tokenizer_dir, tmp_path):
    reference = tmp_path / "uninterrupted"
    Trainer(load_config(write_config(tmp_path / "a.yaml", generator_config(tokenizer_dir, reference)))).fit()

    run = tmp_path / "killed"
    config = write_config(tmp_path / "b.yaml", generator_config(tokenizer_dir, run))
    killed = run_python("tests/training_interrupt.py", str(config), "5")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000003"]
    assert sorted(losses(run)) == [1, 2, 3, 4, 5]  # steps 4 and 5 ran after the checkpoint, then the kill
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "lo')  # as if the kill had struck while a record was being written

    resumed = run_python("-m", "mmgen.app.cli", "train", str(config), "--resume", "latest")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    first_logged = next(line for line in resumed.stdout.splitlines() if line.startswith("step "))
    assert first_logged.split()[1] == "4"  # continued from the saved step 3
    assert report(run)["processes"][0]["samples"] == 5 * 8  # and trained only steps 4..8

    # metrics.jsonl reads as one run: the killed run's records after step 3 were replaced, bit-identical
    assert [r["step"] for r in records(run)] == list(range(1, 9))
    assert losses(run) == losses(reference)
    assert report(run)["weights_sha256"] == report(reference)["weights_sha256"]  # EMA weights exported
    assert [r["step"] for r in records(run, "eval.jsonl")] == [4]
    samples = Path("eval") / "step-00000004" / "samples.png"  # drawn with the EMA weights of step 4
    assert (run / samples).read_bytes() == (reference / samples).read_bytes()
    assert (run / "tensorboard").is_dir() == bool(is_tensorboard_available())


def test_tokenizer_with_workers_and_accumulation_resumes_exactly(tmp_path, monkeypatch):
    values = tokenizer_config(tmp_path / "run", data={"num_workers": 2}, optim={"ema_decay": 0.9})
    reference = tmp_path / "uninterrupted"
    Trainer(config_from_mapping(TrainConfig, {**values, "output_dir": str(reference)})).fit()

    cfg = config_from_mapping(TrainConfig, {**values, "eval": {"num_items": 8, "every": 3}})
    with monkeypatch.context() as patch:
        interrupt_at(patch, 5)
        with pytest.raises(Interrupted):
            Trainer(cfg).fit()
    Trainer(cfg).fit(resume="latest")

    run = Path(cfg.output_dir)
    assert [r["step"] for r in records(run)] == list(range(1, 8))
    assert losses(run) == losses(reference)  # periodic evaluation (with the EMA weights) left training alone
    assert report(run)["weights_sha256"] == report(reference)["weights_sha256"]
    assert report(run)["processes"][0]["samples"] == 3 * 8  # resumed at step 4 of 7
    evaluations = records(run, "eval.jsonl")
    assert [r["step"] for r in evaluations] == [3, 6] and evaluations[0]["shapes_heldout"]["psnr"] > 0


def test_next_x_flow_noise_is_restored_on_resume(kl_tokenizer_dir, tmp_path, monkeypatch):
    """NextX draws noisy-context and flow-matching noise in every step: a resume must draw the same."""
    values = generator_config(kl_tokenizer_dir, tmp_path / "run", pipeline="NextXPipeline",
                              pipeline_args={"entity": "cell", "cell_size": 2, "num_flow_steps": 2},
                              head={"width": 32, "depth": 1}, optim={"steps": 5, "warmup_steps": 0},
                              eval={"every": 0}, checkpoint={"every": 2})
    reference = tmp_path / "uninterrupted"
    Trainer(config_from_mapping(TrainConfig, {**values, "output_dir": str(reference)})).fit()
    cfg = config_from_mapping(TrainConfig, values)
    with monkeypatch.context() as patch:
        interrupt_at(patch, 3)
        with pytest.raises(Interrupted):
            Trainer(cfg).fit()
    Trainer(cfg).fit(resume="latest")
    assert losses(Path(cfg.output_dir)) == losses(reference) and len(losses(reference)) == 5


def test_fresh_run_refuses_an_output_dir_that_holds_a_run(tmp_path):
    cfg = config_from_mapping(TrainConfig, tokenizer_config(tmp_path / "run", optim={"steps": 1}))
    Trainer(cfg).fit()
    before = folder_digest(tmp_path / "run")
    with pytest.raises(FileExistsError, match="--resume latest"):
        Trainer(cfg).fit()
    assert folder_digest(tmp_path / "run") == before


# ---- checkpoints --------------------------------------------------------------------------------------
def test_damaged_checkpoints_fail_clearly_and_change_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    config = write_config(tmp_path / "tok.yaml", tokenizer_config(run))
    assert main(["train", str(config), "--max-steps", "6"]) == 0  # stopped before its 7 steps: there is a run to resume
    checkpoints = run / "checkpoints"
    assert [p.name for p in list_checkpoints(checkpoints)] == ["step-00000004", "step-00000006"]  # keep: 2

    (checkpoints / ".tmp-step-00000008").mkdir()  # a save interrupted before its rename
    (checkpoints / ".tmp-step-00000008" / "model.safetensors").write_bytes(b"partial")
    assert list_checkpoints(checkpoints)[-1].name == "step-00000006"

    weights = checkpoints / "step-00000006" / "model.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(intact[: len(intact) // 2])
    optimizer = checkpoints / "step-00000004" / "optimizer.bin"
    flipped = bytearray(optimizer.read_bytes())
    flipped[-1] ^= 0xFF
    optimizer.write_bytes(bytes(flipped))
    before = folder_digest(run)
    capsys.readouterr()

    assert main(["train", str(config), "--resume", "latest"]) == 2
    err = capsys.readouterr().err
    assert str(weights) in err and "truncated" in err
    assert main(["train", str(config), "--resume", str(checkpoints / "step-00000004")]) == 2
    assert str(optimizer) in capsys.readouterr().err
    assert folder_digest(run) == before

    weights.write_bytes(intact)  # repaired: "latest" is step 6 (the .tmp folder is ignored), one step to go
    assert main(["train", str(config), "--resume", "latest"]) == 0
    assert report(run)["steps"] == 7 and report(run)["processes"][0]["samples"] == 8


# ---- several processes --------------------------------------------------------------------------------
def test_two_cpu_processes_share_each_step_and_stay_in_sync(tokenizer_dir, tmp_path):
    run = tmp_path / "ddp"
    values = generator_config(tokenizer_dir, run, optim={"steps": 3, "mixed_precision": "bf16", "ema_decay": 0.0},
                              eval={"every": 0}, checkpoint={"every": 0})
    config = write_config(tmp_path / "ddp.yaml", values)
    launched = run_python("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "mmgen.app.cli", "train", str(config), timeout=180)
    assert launched.returncode == 0, launched.stderr[-3000:]

    result = report(run)
    assert result["num_processes"] == 2 and result["mixed_precision"] == "bf16"
    ranks = result["processes"]
    assert [p["rank"] for p in ranks] == [0, 1]
    assert [p["samples"] for p in ranks] == [3 * 4, 3 * 4]  # each rank trained on its half of every batch
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"] and result["weights_in_sync"]
    logged = records(run)
    assert [r["step"] for r in logged] == [1, 2, 3]
    # one step is one update whatever the number of processes: the schedule is not advanced twice per step
    expected = [1e-3 * lr_factor(s, steps=3, warmup=2, schedule="cosine", min_ratio=0.1) for s in range(3)]
    assert [r["lr"] for r in logged] == pytest.approx(expected)


def test_each_rank_takes_its_own_slice_of_the_global_batch():
    full = batch_indices(seed=3, step=7, batch_size=8, num_items=50)
    shares = [batch_indices(seed=3, step=7, batch_size=8, num_items=50, rank=r, world_size=2) for r in range(2)]
    assert sorted(torch.cat(shares).tolist()) == sorted(full.tolist())
    assert not set(shares[0].tolist()) & set(shares[1].tolist())


def test_step_batches_are_the_same_with_worker_processes():
    source = TokenSource(torch.arange(40).view(20, 2), torch.arange(20))
    batches = StepBatches(source, fields=("tokens", "class_id"), seed=1, batch_size=4, num_steps=6)
    in_process = [tuple(b) for b in step_batches(batches, start=2)]
    workers = [tuple(b) for b in step_batches(batches, start=2, num_workers=2)]
    assert len(in_process) == 4
    for (tokens_a, labels_a), (tokens_b, labels_b) in zip(in_process, workers, strict=True):
        assert torch.equal(tokens_a, tokens_b) and torch.equal(labels_a, labels_b)


# ---- configs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    ({"optimizer": {}}, r"unknown config key\(s\) \['optimizer'\]"),
    ({"optim": {"lrr": 0.1}}, r"\['optim.lrr'\]"),
    ({"checkpoint": {"every": "often"}}, r"checkpoint.every: expected an integer, got 'often'"),
    ({"optim": {"betas": [0.9]}}, r"optim.betas: expected 2 values"),
    ({"optim": {"lr": "fast"}}, r"optim.lr: expected a number, got 'fast'"),
    ({"data": {"num_workers": -1}}, r"data.num_workers must be >= 0"),
    ({"tensorboard": "yes"}, r"tensorboard: expected true or false"),
])
def test_config_errors_name_the_key(tmp_path, change, message):
    path = write_config(tmp_path / "bad.yaml", tokenizer_config(tmp_path / "run", **change))
    with pytest.raises(ValueError, match=message) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_config_reads_exponent_strings_as_floats(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tokenizer_config(tmp_path / "run")) + "cond_drop_prob: 5e-2\n")
    cfg = load_config(path, overrides={"optim": {"lr": "3e-4", "batch_size": 8, "grad_accum_steps": 2}})
    assert cfg.cond_drop_prob == 0.05 and cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)


def test_a_local_hugging_face_dataset_trains_a_labelled_generator(tokenizer_dir, tmp_path):
    """`data.dataset: hf` reads a `save_to_disk` folder: images resized to data.image_size, labels from a column."""
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    from mmgen.data import ShapesDataset
    from mmgen.app.training.data import build_source

    shapes = ShapesDataset(size=24, length=42, seed=3).batch(range(42))
    pixels = ((shapes["image"] + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    table = datasets.Dataset.from_dict({"picture": [Image.fromarray(p) for p in pixels], "label": shapes["class_id"].tolist()})
    table = table.cast_column("picture", datasets.Image())
    table.save_to_disk(str(tmp_path / "hf"))
    data = {"dataset": "hf", "path": str(tmp_path / "hf"), "image_column": "picture", "label_column": "label", "image_size": 16}

    unsized = load_config(write_config(tmp_path / "unsized.yaml", generator_config(tokenizer_dir, tmp_path / "run", data=data)))
    with pytest.raises(ValueError, match="conditioner.num_classes"):  # labels of the user's own data: their count is not guessed
        Trainer(unsized)
    cfg = load_config(write_config(tmp_path / "hf.yaml", generator_config(tokenizer_dir, tmp_path / "run", data=data,
                                                                          conditioner={"num_classes": 21},
                                                                          eval={"every": 0}, checkpoint={"every": 0})))
    source = build_source(cfg.data)
    batch = source.batch([0, 5])
    assert len(source) == 42 and batch["image"].shape == (2, 3, 16, 16)
    assert batch["class_id"].tolist() == [0, 5] and batch["image"].abs().max() <= 1.0
    result = Trainer(cfg).fit()
    assert result["steps"] == 8 and all(torch.isfinite(torch.tensor(list(losses(tmp_path / "run").values()))))
    bad = load_config(write_config(tmp_path / "bad.yaml", generator_config(tokenizer_dir, tmp_path / "run2",
                                                                           data={**data, "image_column": "img"})))
    with pytest.raises(ValueError, match="image_column 'img'"):
        build_source(bad.data)


def test_text_conditioned_generator_trains_and_follows_prompts_api(tokenizer_dir, tmp_path):
    """`condition: text` puts byte-level captions in the prefix; the exported pipeline takes prompts."""
    from mmgen.conditioning import ByteTextConditioner
    from pipelines import NextTokenPipeline

    values = generator_config(tokenizer_dir, tmp_path / "run", condition="text", eval={"every": 0}, checkpoint={"every": 0})
    Trainer(load_config(write_config(tmp_path / "text.yaml", values))).fit()
    pipe = NextTokenPipeline.from_pretrained(str(tmp_path / "run" / "pipeline"))
    assert isinstance(pipe.conditioner, ByteTextConditioner) and pipe.conditioner.max_prefix > 0
    out = pipe(prompt=["a red circle", "a blue square"], guidance_scale=2.0, output_type="pt",
               generator=[torch.Generator().manual_seed(i) for i in range(2)])
    assert out.images.shape == (2, 3, 16, 16)
    assert "adherence" in report(tmp_path / "run")["eval"]  # judged by asking for each class's caption


def test_text_encoder_conditioned_generator_trains_and_loads_without_the_encoder_folder(tokenizer_dir, tmp_path, capsys):
    """`condition: text_encoder` with `conditioner: {encoder: DIR}`: a frozen transformers encoder feeds the prefix;
    the exported pipeline carries encoder and tokenizer itself and generates from prompts."""
    import shutil

    from mmgen.conditioning import TextEncoderConditioner
    from pipelines import NextTokenPipeline
    from text_encoder_fixture import make_tiny_text_encoder

    encoder = make_tiny_text_encoder(tmp_path / "encoder")
    values = generator_config(tokenizer_dir, tmp_path / "run", condition="text_encoder",
                              conditioner={"encoder": str(encoder), "max_len": 8}, optim={"steps": 4},
                              eval={"every": 0}, checkpoint={"every": 2})
    Trainer(load_config(write_config(tmp_path / "encoder.yaml", values))).fit()
    assert sorted(losses(tmp_path / "run")) == [1, 2, 3, 4]
    from transformers import AutoModel

    original = AutoModel.from_pretrained(str(encoder)).state_dict()
    shutil.rmtree(encoder)
    pipe = NextTokenPipeline.from_pretrained(str(tmp_path / "run" / "pipeline"))
    assert isinstance(pipe.conditioner, TextEncoderConditioner) and pipe.conditioner.max_prefix == 8
    trained = pipe.conditioner.encoder.state_dict()
    assert all(torch.equal(trained[k], original[k]) for k in original)  # the encoder stayed frozen
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt=["a red circle", "a blue square"], guidance_scale=2.0, output_type="pt",
               generator=[torch.Generator().manual_seed(i) for i in range(2)])
    assert out.images.shape == (2, 3, 16, 16)
    exported, samples = tmp_path / "run" / "pipeline", tmp_path / "samples"
    assert main(["generate", str(exported), "--prompt", "a red circle", "--num-samples", "2", "--guidance-scale", "2",
                 "--out", str(samples), "--device", "cpu"]) == 0
    images = json.loads((samples / "manifest.json").read_text())["samples"]
    assert [(i["prompt"], i["class_id"]) for i in images] == [("a red circle", None)] * 2
    assert main(["info", str(exported / "conditioner")]) == 0
    text = capsys.readouterr().out
    assert "TextEncoderConditioner" in text and "tokenizer_json: " in text and pipe.conditioner.cfg.tokenizer_json not in text


def test_next_x_scale_entity_without_patch_nums_gets_room_for_its_default_scales(kl_tokenizer_dir, tmp_path):
    """The GPT's max_seq_len covers the scales NextXPipeline picks itself (4x4 latents: 1, 2, 4)."""
    from mmgen.app.training import build_pipeline

    values = generator_config(kl_tokenizer_dir, tmp_path / "run", pipeline="NextXPipeline",
                              pipeline_args={"entity": "scale"}, head={"width": 16, "depth": 1})
    pipe = build_pipeline(load_config(write_config(tmp_path / "scale.yaml", values)))
    assert pipe.config.patch_nums == [1, 2, 4] and pipe.pattern().num_positions == 1 + 4 + 16
    assert pipe.gpt.cfg.max_seq_len == 1 + pipe.pattern().num_positions  # the class prefix, then the pyramid


def test_length_grouped_batches_are_a_function_of_the_step_and_pad_less():
    lengths = torch.randint(10, 200, (1000,), generator=torch.Generator().manual_seed(0))
    grouped = [length_grouped_indices(seed=3, step=s, batch_size=32, lengths=lengths, pool=4) for s in range(50)]
    assert all(torch.equal(g, length_grouped_indices(seed=3, step=s, batch_size=32, lengths=lengths, pool=4))
               for s, g in enumerate(grouped))
    assert all(len(set(g.tolist())) == 32 for g in grouped)
    plain = [batch_indices(seed=3, step=s, batch_size=32, num_items=1000) for s in range(50)]
    padded = sum(int(lengths[g].max() * 32 - lengths[g].sum()) for g in grouped)
    assert padded < 0.5 * sum(int(lengths[g].max() * 32 - lengths[g].sum()) for g in plain)
    halves = [length_grouped_indices(seed=3, step=7, batch_size=32, lengths=lengths, pool=4, rank=r, world_size=2) for r in (0, 1)]
    assert sorted(torch.cat(halves).tolist()) == sorted(grouped[7].tolist())  # each process its share of the same batch
    source = TokenSource(torch.zeros(8, 3, dtype=torch.long), torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="data.group_by_length"):
        StepBatches(source, fields=("tokens",), seed=0, batch_size=4, num_steps=1, group_by_length=4)


def test_data_class_mix_weights_the_primitives_classes_and_is_refused_elsewhere():
    from mmgen.app.training.config import DataConfig
    from mmgen.app.training.data import build_source

    cubes = build_source(DataConfig(dataset="primitives", resolution=8, num_items=10, class_mix=[0, 1, 0, 0, 0]))
    assert cubes.batch(range(10))["class_id"].tolist() == [1] * 10
    with pytest.raises(ValueError, match="data.class_mix applies to the built-in primitives only"):
        build_source(DataConfig(dataset="shapes", num_items=10, class_mix=[1, 1, 1, 1, 1]))


def test_the_model_card_names_paths_relative_to_the_config_and_how_to_reproduce(tokenizer_dir, tmp_path):
    """A card written on one machine must not carry that machine's folders: the tokenizer path is the config's own."""
    folder = tmp_path / "configs"
    folder.mkdir()
    path = write_config(folder / "card.yaml", generator_config(tokenizer_dir, tmp_path / "run", optim={"steps": 2},
                                                               eval={"every": 0}, checkpoint={"every": 0}))
    Trainer(load_config(path), config_path=str(path)).fit()
    card = next((tmp_path / "run").rglob("README.md")).read_text()
    shown = yaml.safe_load(card.split("## Config")[1].split("```yaml\n")[1].split("```")[0])
    assert shown["tokenizer"] == os.path.relpath(tokenizer_dir, folder) and not Path(shown["tokenizer"]).is_absolute()
    assert f"mmgen train {path}" in card
