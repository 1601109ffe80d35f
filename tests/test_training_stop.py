"""Stopping and restarting runs as a user does: Ctrl-C on a shipped config, ``--max-steps``, ``--resume latest``
on a finished run, ``--set`` overrides, and the checks that fail before any model is built.

The Ctrl-C test runs ``mmgen train`` as a subprocess on ``configs/shapes32/next-token.yaml`` shortened with
``--set``; everything else runs tiny configs in this process.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmgen.app.cli import main
from mmgen.app.training import Trainer, TrainingInterrupted, list_checkpoints, load_config, parse_override
from mmgen.app.training.config import TrainConfig, apply_overrides, config_from_mapping
from mmgen.app.training.stopping import StopRequests
from training_fixtures import (
    REPO,
    folder_digest,
    generator_config,
    losses,
    report,
    tokenizer_config,
    write_config,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHIPPED = "configs/shapes32/next-token.yaml"
SHORTENED = ["optim.steps=24", "optim.batch_size=8", "optim.warmup_steps=2", "data.num_items=96", "log_every=1",
             "eval.samples_per_class=1", "eval.batch_size=21", "checkpoint.every=10", "export_dtype=float32"]


def train_command(output_dir: Path, *extra: str) -> list[str]:
    sets = [arg for item in SHORTENED for arg in ("--set", item)]
    return [sys.executable, "-m", "mmgen.app.cli", "train", SHIPPED, *sets, "--output-dir", str(output_dir), *extra]


def test_ctrl_c_on_a_shipped_config_saves_and_resumes_bit_identically(tmp_path):
    reference = tmp_path / "uninterrupted"
    overrides = dict(parse_override(item) for item in SHORTENED)
    Trainer(load_config(REPO / SHIPPED, overrides={**overrides, "output_dir": str(reference)})).fit()

    run = tmp_path / "interrupted"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(train_command(run), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):  # mid-run: step 3 is logged
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    stopped = int(list_checkpoints(run / "checkpoints")[-1].name.split("-")[1])
    assert 3 <= stopped < 24  # saved at the step boundary after the signal, long before the end
    assert f"SIGINT at step {stopped}: saved checkpoint" in err and "--resume latest" in err
    assert not (run / "eval.json").exists()

    resumed = subprocess.run(train_command(run, "--resume", "latest"), cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert losses(run) == losses(reference) and sorted(losses(run)) == list(range(1, 25))
    assert report(run)["weights_sha256"] == report(reference)["weights_sha256"]
    assert report(run)["processes"][0]["samples"] == (24 - stopped) * 8


def test_max_steps_stops_with_a_checkpoint_and_the_resume_matches_one_run(tokenizer_dir, tmp_path, capsys):
    reference = tmp_path / "reference"
    Trainer(config_from_mapping(TrainConfig, generator_config(tokenizer_dir, reference, eval={"every": 0}))).fit()
    config = write_config(tmp_path / "g.yaml", generator_config(tokenizer_dir, tmp_path / "run", eval={"every": 0}))

    assert main(["train", str(config), "--max-steps", "5"]) == 0
    assert "stopped at step 5 of 8 (--max-steps)" in capsys.readouterr().out
    run = tmp_path / "run"
    assert list_checkpoints(run / "checkpoints")[-1].name == "step-00000005" and not (run / "eval.json").exists()
    assert main(["train", str(config), "--resume", "latest", "--max-steps", "5"]) == 0  # already there: nothing trained
    assert sorted(losses(run)) == [1, 2, 3, 4, 5]
    state_file = list_checkpoints(run / "checkpoints")[-1] / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert 0 < state["train_cpu_seconds"] and 0 < state["train_seconds"]  # the first segment's time travels with the checkpoint
    state_file.write_text(json.dumps({**state, "train_seconds": 1000.0, "train_cpu_seconds": 900.0}))
    assert main(["train", str(config), "--resume", "latest"]) == 0
    assert losses(run) == losses(reference)
    assert report(run)["weights_sha256"] == report(reference)["weights_sha256"]
    assert 1000 < report(run)["train_seconds"] < 1600 and 900 < report(run)["train_cpu_seconds"] < 1500  # both segments


def test_resuming_a_finished_run_says_so_and_changes_nothing(tmp_path, capsys):
    config = write_config(tmp_path / "t.yaml", tokenizer_config(tmp_path / "run", optim={"steps": 3}))
    assert main(["train", str(config)]) == 0
    before = folder_digest(tmp_path / "run")
    capsys.readouterr()
    assert main(["train", str(config), "--resume", "latest"]) == 0
    assert "already finished at step 3" in capsys.readouterr().out
    assert folder_digest(tmp_path / "run") == before
    assert Trainer(load_config(config)).fit(resume="latest")["already_finished"] is True


def test_a_signal_in_the_loop_raises_training_interrupted_after_saving(tmp_path, monkeypatch):
    cfg = config_from_mapping(TrainConfig, tokenizer_config(tmp_path / "run", checkpoint={"every": 0}))
    train_step = Trainer._train_step

    def signalling_step(self: Trainer, batch: tuple) -> dict[str, float]:
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step; the step still completes
        return train_step(self, batch)

    monkeypatch.setattr(Trainer, "_train_step", signalling_step)
    with pytest.raises(TrainingInterrupted) as stop:
        Trainer(cfg).fit()
    assert (stop.value.signal_name, stop.value.step) == ("SIGTERM", 3)
    assert stop.value.checkpoint == tmp_path / "run" / "checkpoints" / "step-00000003" and stop.value.checkpoint.is_dir()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the trainer's handlers are gone again


def test_a_second_signal_aborts_without_waiting():
    with StopRequests() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_overrides_set_nested_keys_with_the_checks_of_the_file(tmp_path):
    config = write_config(tmp_path / "t.yaml", tokenizer_config(tmp_path / "run"))
    cfg = load_config(config, overrides=dict(parse_override(t) for t in ["optim.lr=1e-4", "optim.steps=200", "data.num_items=9",
                                                                          "tokenizer.codebook_size=16", "threads=2"]))
    assert (cfg.optim.lr, cfg.optim.steps, cfg.data.num_items, cfg.tokenizer["codebook_size"], cfg.threads) == (1e-4, 200, 9, 16, 2)
    assert cfg.optim.batch_size == 8  # untouched siblings stay
    assert apply_overrides({"optim": None}, {"optim.steps": 3}) == {"optim": {"steps": 3}}


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "train.steps=200"], "--set train.steps: no such config key; did you mean"),
    (["--set", "optim.lr=fast"], "optim.lr: expected a number, got 'fast'"),
    (["--set", "optim.steps=0"], "optim.steps must be >= 1, got 0"),
    (["--set", "optim.steps"], "--set: expected KEY=VALUE"),
    (["--set", "optim.betas=[0.9"], "--set optim.betas: the value '[0.9' is not valid YAML"),
    (["--set", "kind=model"], "kind must be one of"),
    (["--resume", "latest"], "--resume latest: no checkpoint in"),
    (["--resume", "nowhere/step-1"], "--resume nowhere/step-1: no such checkpoint folder"),
])
def test_bad_starts_fail_by_name_before_any_model_is_built(tmp_path, capsys, monkeypatch, args, message):
    config = write_config(tmp_path / "t.yaml", tokenizer_config(tmp_path / "run"))

    def never(*_: object, **__: object) -> None:
        raise AssertionError("a model was built before the start was checked")

    monkeypatch.setattr(Trainer, "__init__", never)
    assert main(["train", str(config), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_existing_run_is_refused_before_any_model_is_built(tmp_path, capsys, monkeypatch):
    config = write_config(tmp_path / "t.yaml", tokenizer_config(tmp_path / "run", optim={"steps": 1}))
    assert main(["train", str(config)]) == 0
    monkeypatch.setattr(Trainer, "__init__", lambda *_, **__: pytest.fail("built a model"))
    capsys.readouterr()
    assert main(["train", str(config)]) == 2
    assert "already holds a run" in capsys.readouterr().err


RUN_CONFIGS = sorted(p for p in glob.glob(str(REPO / "configs" / "*" / "*.yaml"))
                     if Path(p).parent.name != "tokenizers")  # configs/tokenizers: presets of scripts/train_tokenizer.py


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: Path(p).relative_to(REPO).as_posix())
def test_every_shipped_run_config_checkpoints_during_the_run(path):
    cfg = load_config(path)
    assert 0 < cfg.checkpoint.every < cfg.optim.steps
