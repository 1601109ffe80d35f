"""One training loop for every trainable component, on ``accelerate``.

The same code runs on one CPU process, on several (gloo) processes and on many GPUs under DDP or FSDP:
everything distributed goes through the :class:`accelerate.Accelerator`. What a step does is a function of
``(seed, step)`` and the saved state alone: its data comes from :func:`~.data.batch_indices`, every random
draw (condition dropout, noise, a tokenizer's own sampling) from generators seeded by
:func:`~.data.step_seed` of ``(seed, step, rank)``, and the learning rate from :func:`lr_factor` of the step.
So a run resumed from a checkpoint continues with exactly the losses of the uninterrupted run.

One step is one optimiser update on ``optim.batch_size`` samples in all: each of the N processes takes its
own 1/N of them, in ``optim.grad_accum_steps`` micro-batches.

Files in ``output_dir``: ``metrics.jsonl`` (one record per ``log_every`` steps; a resumed run first drops the
records after its checkpoint's step, so the file reads as one run), ``eval.jsonl`` and ``eval/step-N/``
(periodic evaluation), ``checkpoints/step-N`` (atomic, verified on load), ``tensorboard/`` (when installed),
the exported model and ``eval.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import (
    ProjectConfiguration,
    gather_object,
    is_tensorboard_available,
    set_seed,
)
from torch import nn
from tqdm.auto import tqdm

from mmgen.files import write_text_atomically

from .builders import build_pipeline, build_tokenizer
from .config import PATH_KEYS, TrainConfig, apply_overrides
from .data import (
    StepBatches,
    TokenSource,
    build_source,
    class_captions,
    load_token_shards,
    step_batches,
    step_seed,
)
from .ema import EMA
from .stopping import StopRequests, TrainingInterrupted

__all__ = ["Trainer", "TrainingInterrupted", "check_run_start", "finished_report", "train", "encode_dataset", "list_checkpoints", "verify_checkpoint", "lr_factor", "weights_sha256", "CheckpointError"]

CHECKPOINT_PREFIX = "step-"
LATENT_STATS_ITEMS = 2048
STATE_FILE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"
EVAL_LOG_FILE = "eval.jsonl"
TENSORBOARD_DIR = "tensorboard"


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be resumed from: incomplete, truncated or altered since it was saved."""


class _TokenizerObjective(nn.Module):
    """Wraps a tokenizer so the accelerator (DDP / FSDP) sees one module whose forward is the loss."""

    def __init__(self, tokenizer: nn.Module) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        return self.tokenizer.loss(images)


class _GeneratorObjective(nn.Module):
    """The trainable parts of a pipeline (conditioner, GPT, head) with the paradigm's loss as forward."""

    def __init__(self, pipe: Any, *, condition: str, cond_drop_prob: float, captions: list[str] | None) -> None:
        super().__init__()
        self.gpt, self.head, self.conditioner = pipe.gpt, pipe.head, pipe.conditioner
        self._pipe = [pipe]  # not a submodule: the frozen tokenizer is not trained
        self.condition, self.cond_drop_prob, self.captions = condition, cond_drop_prob, captions

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        if self.condition != "class":
            prompts = [self.captions[int(c)] for c in labels]
            return self._pipe[0].loss(tokens, prompt=prompts, cond_drop_prob=self.cond_drop_prob, generator=generator)
        return self._pipe[0].loss(tokens, class_labels=labels, cond_drop_prob=self.cond_drop_prob, generator=generator)


def lr_factor(step: int, *, steps: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base learning rate at ``step``: linear warm-up, then cosine to ``min_ratio`` or constant."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, steps - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def weights_sha256(module: nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes and values): equal hashes mean equal weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        digest.update(data.flatten().view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


class _Meter:
    """Sums of per-step values since the last log record, averaged when the record is written."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.count += 1

    def pop(self) -> dict[str, float]:
        means = {key: value / self.count for key, value in self.sums.items()}
        self.sums, self.count = {}, 0
        return means


class Trainer:
    """Train what ``cfg`` describes. ``Trainer(cfg).fit(resume="latest")`` continues from the newest checkpoint."""

    def __init__(self, cfg: TrainConfig, *, accelerator: Accelerator | None = None, config_path: str | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path  # named in the model card's "how to reproduce"
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.output_dir = Path(cfg.output_dir)
        self.accelerator = accelerator or _build_accelerator(cfg, self.output_dir)
        acc = self.accelerator
        _check_batch_split(cfg, acc)
        set_seed(cfg.seed)
        self.pipe = None
        if cfg.kind == "tokenizer":
            source = build_source(cfg.data)
            self.model = build_tokenizer(cfg.tokenizer)
            objective: nn.Module = _TokenizerObjective(self.model)
            fields: tuple[str, ...] = (source.modality,)
        else:
            captions = class_captions(cfg.data.dataset)
            if cfg.condition != "class" and captions is None:
                raise ValueError(f"condition: {cfg.condition!r} needs captions; data.dataset {cfg.data.dataset!r} has none "
                                 "(text conditioning trains on the built-in shapes or tones)")
            data = build_source(cfg.data)  # a missing or empty data folder fails before any model is built
            self.pipe = build_pipeline(cfg)
            self.model = self.pipe
            objective = _GeneratorObjective(self.pipe, condition=cfg.condition, cond_drop_prob=cfg.cond_drop_prob, captions=captions)
            source, fields = self._generator_tokens(data), ("tokens", "class_id")
        self.batches = StepBatches(source, fields=fields, seed=cfg.seed, batch_size=cfg.optim.batch_size,
                                   num_steps=cfg.optim.steps, rank=acc.process_index, world_size=acc.num_processes,
                                   group_by_length=cfg.data.group_by_length)
        params = [p for p in objective.parameters() if p.requires_grad]
        optim = cfg.optim
        optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
        self.objective, self.optimizer = acc.prepare(objective, optimizer)
        self.ema = EMA(acc.unwrap_model(self.objective), decay=optim.ema_decay) if optim.ema_decay else None
        if self.ema is not None:
            acc.register_for_checkpointing(self.ema)
        self.step = 0
        self.samples = 0  # trained on by this process since it started (not restored on resume)
        self.time_before = {"train_seconds": 0.0, "train_cpu_seconds": 0.0}  # spent before a resume (from the checkpoint)
        self._clock = (time.perf_counter(), time.process_time())

    # ---- data ----------------------------------------------------------------------------------------
    def _generator_tokens(self, data: Any) -> TokenSource:
        """Tokens and labels of the training samples ``data``: read from ``data.tokens`` shards, or encoded once here."""
        if self.cfg.data.tokens:
            tokens, labels, meta = load_token_shards(self.cfg.data.tokens)
            if meta.get("pipeline") != self.cfg.pipeline:
                raise ValueError(f"data.tokens {self.cfg.data.tokens} were extracted for {meta.get('pipeline')}, not {self.cfg.pipeline}")
            sample = data.batch([0])[data.modality].to(self.pipe.device)
            expected = tuple(self.pipe.tokenize(sample).shape[1:])
            if tuple(tokens.shape[1:]) != expected:  # e.g. shards of an older mmgen, which stored latents channel-first
                raise ValueError(f"data.tokens {self.cfg.data.tokens} hold tokens of shape {tuple(tokens.shape[1:])}; this run's "
                                 f"{self.cfg.pipeline} learns sequences of shape {expected}: extract them again with `mmgen tokenize`")
            if "latent_mean" in meta:
                self.pipe.head.latent_mean.copy_(torch.tensor(meta["latent_mean"]))
                self.pipe.head.latent_std.copy_(torch.tensor(meta["latent_std"]))
            return TokenSource(tokens, labels, self.pipe.sequence_lengths(tokens))
        fit_latent_statistics(self.pipe, data)
        tokens, labels = encode_dataset(self.pipe, data, batch_size=256)
        return TokenSource(tokens, labels, self.pipe.sequence_lengths(tokens))

    def _micro_batches(self, batch: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """This process's share of a step split into ``grad_accum_steps`` micro-batches, on the device."""
        device, k = self.accelerator.device, self.cfg.optim.grad_accum_steps
        chunks = [torch.tensor_split(field, k) for field in batch]
        return [tuple(c[j].to(device) for c in chunks) for j in range(k)]

    # ---- loop ----------------------------------------------------------------------------------------
    def fit(self, *, resume: str | None = None, max_steps: int | None = None) -> dict[str, Any]:
        """Train to ``optim.steps``; save checkpoints, the final model and ``eval.json``. Returns the final report.

        ``resume`` ("latest" or a checkpoint folder) restores the saved state first; the records of
        ``metrics.jsonl`` and ``eval.jsonl`` after that step (written by the interrupted run) are dropped and
        the resumed run appends its own. Without ``resume``, an ``output_dir`` that already holds a run is refused;
        resuming a finished run returns its report (``"already_finished": True``) and trains nothing.
        ``max_steps`` stops at that global step with a checkpoint (the schedule still spans ``optim.steps``, so a
        later resume continues exactly); the report then has ``"stopped_at"`` and ``"checkpoint"``.
        SIGINT / SIGTERM end the current step, save a checkpoint and raise :class:`TrainingInterrupted`.
        """
        cfg, acc = self.cfg, self.accelerator
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if resume is None:
            check_run_start(cfg, resume=None)
        else:
            finished = finished_report(cfg)
            if finished is not None:
                return {**finished, "already_finished": True}
            self.load_checkpoint(resume)  # resolves and verifies the checkpoint
        self._open_outputs(resumed=resume is not None)
        stop_at = min(cfg.optim.steps, max_steps or cfg.optim.steps)
        meter = _Meter()
        start, first_step = time.perf_counter(), self.step
        self._clock = (start, time.process_time())
        self.objective.train()
        pin = acc.device.type == "cuda"
        bar = tqdm(total=cfg.optim.steps, initial=self.step, desc=f"train {cfg.kind}", unit="step",
                   disable=not acc.is_main_process, dynamic_ncols=True)
        stop_reason = "max_steps" if self.step >= stop_at and self.step < cfg.optim.steps else None
        with StopRequests() as stop:
            batches = step_batches(self.batches, start=self.step, num_workers=cfg.data.num_workers, pin_memory=pin)
            for batch in batches if stop_reason is None else ():
                logs = self._train_step(batch)
                meter.add(logs)
                self.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.4g}", refresh=False)
                if self.step % cfg.log_every == 0 or self.step == cfg.optim.steps:
                    rate = (self.step - first_step) / (time.perf_counter() - start)
                    self._log({"step": self.step, "lr": self._lr(self.step - 1), "steps_per_s": rate, **self._reduce(meter.pop())})
                if cfg.eval.every and self.step % cfg.eval.every == 0 and self.step < cfg.optim.steps:
                    self.evaluate_now()
                if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0 and self.step < cfg.optim.steps:
                    self.save_checkpoint()
                stop_reason = self._agreed_stop(stop.received, at_max_steps=self.step >= stop_at)
                if stop_reason is not None:
                    break
            bar.close()
            if stop_reason is not None and self.step < cfg.optim.steps:
                if meter.count:
                    self._log({"step": self.step, "lr": self._lr(self.step - 1), **self._reduce(meter.pop())})
                checkpoint = self._checkpoint_of_this_step()
                for tracker in acc.trackers:
                    tracker.finish()
                if stop_reason != "max_steps":
                    raise TrainingInterrupted(signal_name=stop_reason, step=self.step, checkpoint=checkpoint)
                return {"kind": cfg.kind, "steps": self.step, "stopped_at": self.step, "checkpoint": str(checkpoint)}
        spent = self.train_time()
        acc.wait_for_everyone()
        report = self.finish(train_seconds=spent["train_seconds"], cpu_seconds=spent["train_cpu_seconds"])
        for tracker in acc.trackers:
            tracker.finish()
        return report

    def train_time(self) -> dict[str, float]:
        """Wall and CPU seconds of training so far, the segments before a resume included (saved in each checkpoint)."""
        wall, cpu = self._clock
        return {"train_seconds": self.time_before["train_seconds"] + time.perf_counter() - wall,
                "train_cpu_seconds": self.time_before["train_cpu_seconds"] + time.process_time() - cpu}

    def _agreed_stop(self, received: str | None, *, at_max_steps: bool) -> str | None:
        """Why to stop after this step ("SIGINT", "SIGTERM", "max_steps") or None; every process agrees, so all
        of them save the same checkpoint (a signal may reach the ranks a step apart)."""
        acc = self.accelerator
        if acc.num_processes > 1:
            number = signal.Signals[received].value if received else 0
            number = int(acc.reduce(torch.tensor([number], device=acc.device), reduction="max").item())
            received = signal.Signals(number).name if number else None
        if received is not None:
            return received
        return "max_steps" if at_max_steps else None

    def _checkpoint_of_this_step(self) -> Path:
        """The checkpoint of the current step: the periodic one if it was just written, else a new one."""
        existing = list_checkpoints(self.checkpoint_dir)
        if existing and existing[-1].name == f"{CHECKPOINT_PREFIX}{self.step:08d}":
            return existing[-1]
        return self.save_checkpoint()

    def _train_step(self, batch: tuple[Any, ...]) -> dict[str, float]:
        """One optimiser update; every random draw in it is seeded by ``(seed, step, rank)``. Returns its logs."""
        cfg, acc = self.cfg, self.accelerator
        rank, k = acc.process_index, cfg.optim.grad_accum_steps
        torch.manual_seed(step_seed(cfg.seed, self.step, rank, stream="global"))
        generator = torch.Generator().manual_seed(step_seed(cfg.seed, self.step, rank, stream="loss"))
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr(self.step)
        extra = (generator,) if cfg.kind == "generator" else ()
        logs: dict[str, float] = {}
        for j, inputs in enumerate(self._micro_batches(batch)):
            sync = acc.no_sync(self.objective) if j < k - 1 else contextlib.nullcontext()  # all-reduce once, at the end
            with sync:
                loss, parts = self.objective(*inputs, *extra)
                acc.backward(loss / k)
            for key, value in {"loss": float(loss.detach()), **parts}.items():
                logs[key] = logs.get(key, 0.0) + float(value) / k
            self.samples += int(inputs[0].shape[0])
        if cfg.optim.grad_clip > 0:
            acc.clip_grad_norm_(self.objective.parameters(), cfg.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(acc.unwrap_model(self.objective))
        return logs

    def _lr(self, step: int) -> float:
        optim = self.cfg.optim
        return optim.lr * lr_factor(step, steps=optim.steps, warmup=optim.warmup_steps, schedule=optim.schedule,
                                    min_ratio=optim.min_lr_ratio)

    def _reduce(self, means: dict[str, float]) -> dict[str, float]:
        """Average a record's values over the processes, so the log describes the whole global batch."""
        acc = self.accelerator
        if acc.num_processes == 1 or not means:
            return means
        keys = list(means)
        values = acc.reduce(torch.tensor([means[k] for k in keys], dtype=torch.float64, device=acc.device), reduction="mean")
        return dict(zip(keys, values.tolist()))

    # ---- outputs -------------------------------------------------------------------------------------
    def _open_outputs(self, *, resumed: bool) -> None:
        """Create ``output_dir``; after a resume, drop the interrupted run's records beyond the checkpoint; start trackers."""
        acc = self.accelerator
        acc.wait_for_everyone()  # every process has passed its checks before anything is written
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if resumed:
                for name in (METRICS_FILE, EVAL_LOG_FILE):
                    _truncate_records(self.output_dir / name, after_step=self.step)
        acc.wait_for_everyone()
        if acc.log_with and not acc.trackers:
            acc.init_trackers(TENSORBOARD_DIR)

    def _log(self, record: dict[str, Any]) -> None:
        acc = self.accelerator
        if acc.is_main_process:
            tqdm.write("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
            _append_record(self.output_dir / METRICS_FILE, record)
        acc.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=record["step"])

    @contextlib.contextmanager
    def _evaluation_weights(self) -> Iterator[nn.Module]:
        """The unwrapped model in eval mode, with the EMA weights in place if kept; training state restored after."""
        module = self.accelerator.unwrap_model(self.objective)
        module.eval()
        try:
            with self.ema.applied(module) if self.ema is not None else contextlib.nullcontext(module):
                yield module
        finally:
            module.train()

    def evaluate_now(self) -> dict[str, Any]:
        """Periodic evaluation at the current step: a record in ``eval.jsonl``, samples under ``eval/step-N/``."""
        acc = self.accelerator
        results: dict[str, Any] = {}
        if acc.is_main_process:
            with self._evaluation_weights():
                results = self.evaluate(out_dir=self.output_dir / "eval" / f"{CHECKPOINT_PREFIX}{self.step:08d}")
            _append_record(self.output_dir / EVAL_LOG_FILE, {"step": self.step, **results})
            print(f"eval step {self.step}: {json.dumps(results, default=float)}", flush=True)
        acc.log({f"eval/{k}": v for k, v in _flatten(results).items()}, step=self.step)
        acc.wait_for_everyone()
        return results

    def finish(self, *, train_seconds: float, cpu_seconds: float) -> dict[str, Any]:
        """Evaluate (with EMA weights if kept), export the model with ``save_pretrained`` and write ``eval.json``.

        ``train_seconds`` / ``train_cpu_seconds`` cover every segment of a resumed run (steps lost to a kill after
        the last checkpoint, and the evaluation, are not counted). The report names ``num_processes`` and, per process, the samples it trained on since it started (a
        resumed process counts from the resume) and the SHA-256 of its final weights: under data parallelism
        they must all be equal, so ``weights_in_sync`` checks the run.
        """
        acc = self.accelerator
        module = acc.unwrap_model(self.objective)
        if self.ema is not None:
            self.ema.copy_to(module)
        processes = gather_object([{"rank": acc.process_index, "samples": self.samples, "weights_sha256": weights_sha256(module)}])
        hashes = {p["weights_sha256"] for p in processes}
        report: dict[str, Any] = {"kind": self.cfg.kind, "steps": self.step, "train_seconds": train_seconds,
                                  "train_cpu_seconds": cpu_seconds, "num_processes": acc.num_processes,
                                  "mixed_precision": acc.mixed_precision, "parameters": sum(p.numel() for p in module.parameters()),
                                  "weights_sha256": processes[0]["weights_sha256"], "weights_in_sync": len(hashes) == 1,
                                  "processes": processes}
        if acc.is_main_process:
            module.eval()
            export_dtype = getattr(torch, self.cfg.export_dtype)
            round_weights(self.model, export_dtype)  # evaluate exactly the weights that are exported
            report["export_dtype"] = self.cfg.export_dtype
            report["eval"] = self.evaluate()
            export = self.output_dir / ("pipeline" if self.cfg.kind == "generator" else "tokenizer")
            staging = export.with_name(f".tmp-{export.name}")  # an interrupted export leaves the previous one whole
            if staging.exists():
                shutil.rmtree(staging)
            self.model.to(export_dtype).save_pretrained(str(staging))
            self.model.to(torch.float32)
            self._write_model_card(staging, report)
            if export.exists():
                shutil.rmtree(export)
            staging.rename(export)
            write_text_atomically(self.output_dir / "eval.json", json.dumps(report, indent=2, default=float))
        acc.log({f"eval/{k}": v for k, v in _flatten(report.get("eval", {})).items()}, step=self.step)
        acc.wait_for_everyone()
        return report

    def _write_model_card(self, folder: Path, report: dict[str, Any]) -> None:
        """README.md beside the exported weights: config, data, training settings and the measured metrics."""
        from mmgen.model_card import TASK_TAGS, loading_code, write_model_card

        cfg = self.cfg
        name = type(self.model).__name__
        module = type(self.model).__module__.split(".")[0]  # pipelines, tokenizers_visual or tokenizers_audio
        audio = cfg.data.dataset in ("tones", "audio_folder")
        items = (f"clips of {cfg.data.clip_seconds:g} s at {cfg.data.sample_rate} Hz" if audio
                 else f"occupancy grids of {cfg.data.resolution}^3" if cfg.data.dataset in ("primitives", "mesh_folder")
                 else f"images of {cfg.data.image_size}x{cfg.data.image_size}")
        data = (f"{cfg.data.dataset} ({cfg.data.num_items} {items}"
                f"{', path ' + cfg.data.path if cfg.data.path else ''}; seed {cfg.data.seed})")
        training = {"steps": report["steps"], "batch_size": cfg.optim.batch_size, "lr": cfg.optim.lr,
                    "processes": report["num_processes"], "train_seconds": round(report["train_seconds"], 1),
                    "train_cpu_seconds": round(report["train_cpu_seconds"], 1), "parameters_trained": report["parameters"],
                    "export_dtype": cfg.export_dtype}
        metrics = {k: v for k, v in _flatten(report.get("eval", {})).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        modality = getattr(getattr(self.model, "tokenizer", self.model), "modality", "image")
        tag = f"{modality}-tokenizer" if cfg.kind == "tokenizer" else TASK_TAGS.get(modality, modality)
        write_model_card(folder, title=f"{name} trained with mmgen", config=self._card_config(), data=data, tags=[tag],
                         training=training, metrics=metrics, usage=loading_code(name, "path/to/this/folder", module=module),
                         reproduce=f"mmgen train {self.config_path}" if self.config_path else None, overwrite=True)

    def _card_config(self) -> dict[str, Any]:
        """The config as the card shows it: paths (resolved when the config was read) relative to the config's folder
        again, so the card names what the run read without this machine's directories."""
        shown = dataclasses.asdict(self.cfg)
        if not self.config_path:
            return shown
        base = Path(self.config_path).resolve().parent
        values = {key: functools.reduce(getattr, key.split("."), self.cfg) for key in PATH_KEYS}
        return apply_overrides(shown, {key: os.path.relpath(value, base) for key, value in values.items()
                                       if isinstance(value, str) and Path(value).is_absolute()})

    def evaluate(self, *, out_dir: Path | None = None) -> dict[str, Any]:
        """Generators: prompt adherence on the shapes classes, sample grid in ``out_dir`` (default ``output_dir``).
        Tokenizers: reconstruction of held-out shapes and photo crops."""
        from .evaluation import evaluate_generator, evaluate_tokenizer

        if self.cfg.kind == "tokenizer":
            return evaluate_tokenizer(self.model, self.cfg)
        return evaluate_generator(self.pipe, self.cfg, out_dir=out_dir or self.output_dir)

    # ---- checkpoints ---------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    def save_checkpoint(self) -> Path:
        """``accelerator.save_state`` into a temporary folder, renamed into place once complete; keep the newest K.

        ``trainer_state.json`` lists every file with its size and SHA-256, so a resume detects damage.
        """
        acc = self.accelerator
        final = self.checkpoint_dir / f"{CHECKPOINT_PREFIX}{self.step:08d}"
        tmp = self.checkpoint_dir / f".tmp-{CHECKPOINT_PREFIX}{self.step:08d}"
        if acc.is_main_process:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {"step": self.step, **self.train_time(), "files": _manifest(tmp)}
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            for old in list_checkpoints(self.checkpoint_dir)[: -self.cfg.checkpoint.keep]:
                shutil.rmtree(old)
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, which: str) -> None:
        """Restore model, optimiser, EMA and RNG states from ``which`` ("latest" or a folder), after verifying it.

        A damaged checkpoint raises :class:`CheckpointError` naming the file, before anything is read into the
        run or written to disk; "latest" does not fall back to an older one silently.
        """
        folder = resolve_checkpoint(self.checkpoint_dir, which)
        step = verify_checkpoint(folder)
        try:
            self.accelerator.load_state(str(folder))
        except Exception as err:  # a checkpoint of another model or accelerate version: say which folder
            raise CheckpointError(f"could not restore the run from checkpoint {folder}: {err}") from err
        self.step = step
        state = json.loads((folder / STATE_FILE).read_text())
        self.time_before = {name: float(state.get(name, 0.0)) for name in self.time_before}  # older checkpoints: 0


def resolve_checkpoint(checkpoint_dir: Path, which: str) -> Path:
    """The folder ``--resume which`` names: the newest complete checkpoint for "latest", else ``which`` itself."""
    if which == "latest":
        found = list_checkpoints(checkpoint_dir)
        if not found:
            raise FileNotFoundError(f"--resume latest: no checkpoint in {checkpoint_dir} (a run saves one every "
                                    "checkpoint.every steps and when it is stopped with Ctrl-C)")
        return found[-1]
    folder = Path(which)
    if not folder.is_dir():
        raise FileNotFoundError(f"--resume {which}: no such checkpoint folder")
    return folder


def check_run_start(cfg: TrainConfig, *, resume: str | None) -> None:
    """Refuse a start that cannot work, before any model is built: a fresh run into an ``output_dir`` that holds
    one, or a resume with no checkpoint to resume from (a finished run is fine: it is reported, not re-run)."""
    output_dir = Path(cfg.output_dir)
    if resume is None:
        for name in (METRICS_FILE, "checkpoints"):
            if (output_dir / name).exists():
                raise FileExistsError(f"output_dir {str(output_dir)!r} already holds a run ({name}); "
                                      "continue it with --resume latest, or choose another output_dir")
    elif finished_report(cfg) is None:
        verify_checkpoint(resolve_checkpoint(output_dir / "checkpoints", resume))


def finished_report(cfg: TrainConfig) -> dict[str, Any] | None:
    """The ``eval.json`` report of a run in ``cfg.output_dir`` that reached ``optim.steps`` and exported its model."""
    output_dir = Path(cfg.output_dir)
    export = output_dir / ("pipeline" if cfg.kind == "generator" else "tokenizer")
    try:
        report = json.loads((output_dir / "eval.json").read_text())
    except (OSError, ValueError):
        return None
    finished = isinstance(report, dict) and report.get("steps") == cfg.optim.steps and export.is_dir()
    return report if finished else None


def _build_accelerator(cfg: TrainConfig, output_dir: Path) -> Accelerator:
    """Mixed precision from the config; tensorboard logging into ``output_dir/tensorboard`` when it is installed.

    Processes started by ``torchrun`` on a machine without CUDA join one gloo group (accelerate would
    otherwise run each as a separate single-process job).
    """
    trackers = ["tensorboard"] if cfg.tensorboard and is_tensorboard_available() else None
    project = ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir))
    cpu_group = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    return Accelerator(mixed_precision=cfg.optim.mixed_precision, log_with=trackers, project_config=project, cpu=cpu_group)


def _check_batch_split(cfg: TrainConfig, acc: Accelerator) -> None:
    """Every process and micro-batch gets an equal share of a step, so averaging the gradients weighs samples equally."""
    if acc.gradient_accumulation_steps != 1:
        raise ValueError("pass an Accelerator without gradient_accumulation_steps: the Trainer accumulates "
                         "optim.grad_accum_steps micro-batches itself")
    num_processes = acc.num_processes
    parts = num_processes * cfg.optim.grad_accum_steps
    if cfg.optim.batch_size % parts:
        raise ValueError(f"optim.batch_size={cfg.optim.batch_size} must split evenly over {num_processes} process(es) "
                         f"x optim.grad_accum_steps={cfg.optim.grad_accum_steps}")


def _manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file under ``folder`` (relative POSIX paths)."""
    return {path.relative_to(folder).as_posix(): {"bytes": path.stat().st_size, "sha256": _file_sha256(path)}
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != STATE_FILE}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checkpoint(folder: Path) -> int:
    """The step of checkpoint ``folder`` after checking each file against the sizes and hashes saved with it.

    Checkpoints written before the file list existed carry only their step and are not checked.
    """
    state_file = folder / STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(f"{folder} is not a complete checkpoint: {STATE_FILE} is missing")
    try:
        state = json.loads(state_file.read_text())
        step, files = int(state["step"]), dict(state.get("files", {}))
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint file {state_file} is damaged ({err}); resume from an older checkpoint folder") from err
    for name, expected in files.items():
        _verify_file(folder / name, expected)
    return step


def _verify_file(path: Path, expected: dict[str, Any]) -> None:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing; resume from an older checkpoint folder")
    size = path.stat().st_size
    if size != expected["bytes"]:
        raise CheckpointError(f"checkpoint file {path} is truncated or damaged: {size} bytes, saved with "
                              f"{expected['bytes']}; resume from an older checkpoint folder")
    if _file_sha256(path) != expected["sha256"]:
        raise CheckpointError(f"checkpoint file {path} is damaged: its SHA-256 differs from the one saved with it; "
                              "resume from an older checkpoint folder")


def fit_latent_statistics(pipe: Any, source: Any, *, max_items: int = LATENT_STATS_ITEMS) -> None:
    """Continuous tokens: fit the flow head's per-channel normalisation on up to ``max_items`` training samples."""
    if callable(getattr(pipe.head, "set_latent_statistics", None)):
        pipe.set_latent_statistics(source.batch(list(range(min(len(source), max_items))))[source.modality])


@torch.no_grad()
def round_weights(model: Any, dtype: torch.dtype) -> None:
    """Round every floating-point parameter and buffer to ``dtype`` and back, in place (a no-op for float32)."""
    if dtype == torch.float32:
        return
    modules = [c for c in model.components.values() if isinstance(c, nn.Module)] if hasattr(model, "components") else [model]
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(dtype).to(tensor.dtype))


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first (temporary folders of an interrupted save are skipped)."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and p.name[len(CHECKPOINT_PREFIX):].isdigit() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def _append_record(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record, default=float) + "\n")


def _truncate_records(path: Path, *, after_step: int) -> None:
    """Drop the JSONL records of steps beyond ``after_step`` (rewritten through a temporary file)."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if _record_step(line) <= after_step]
    if kept == lines:
        return
    write_text_atomically(path, "".join(kept))


def _record_step(line: str) -> float:
    """The step of a JSONL record; a torn line (the process was killed while writing it) counts as after every step."""
    try:
        return float(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return math.inf


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested numeric results as ``{"a/b": value}`` for the trackers; non-numbers are left out."""
    flat: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat


@torch.no_grad()
def encode_dataset(pipe: Any, source: Any, *, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sample of ``source`` through ``pipe.tokenize``: ``(tokens, class labels)`` on the CPU."""
    tokens, labels = [], []
    for start in range(0, len(source), batch_size):
        batch = source.batch(list(range(start, min(start + batch_size, len(source)))))
        tokens.append(pipe.tokenize(batch[source.modality].to(pipe.device)).cpu())
        labels.append(torch.as_tensor(batch["class_id"]))
    return torch.cat(tokens), torch.cat(labels)


def train(cfg: TrainConfig, *, resume: str | None = None) -> dict[str, Any]:
    """Build a :class:`Trainer` for ``cfg`` and run it."""
    return Trainer(cfg).fit(resume=resume)
