"""One training loop for every trainable component, on ``accelerate``.

The same code runs on one CPU process, on several (gloo) processes and on many GPUs under DDP or FSDP:
everything distributed goes through the :class:`accelerate.Accelerator`. A step's data is a function of
``(seed, step)`` and every random draw of a step comes from generators seeded by ``(seed, step, rank)``,
so a run resumed from a checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn

from mmgen.data import caption

from .builders import build_pipeline, build_tokenizer
from .config import TrainConfig
from .data import batch_indices, build_image_source, load_token_shards
from .ema import EMA

__all__ = ["Trainer", "train", "encode_dataset", "list_checkpoints", "lr_factor"]

CHECKPOINT_PREFIX = "step-"
STATE_FILE = "trainer_state.json"


class _TokenizerObjective(nn.Module):
    """Wraps a tokenizer so the accelerator (DDP / FSDP) sees one module whose forward is the loss."""

    def __init__(self, tokenizer: nn.Module) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        return self.tokenizer.loss(images)


class _GeneratorObjective(nn.Module):
    """The trainable parts of a pipeline (GPT, and the flow head if any) with the paradigm's loss as forward."""

    def __init__(self, pipe: Any, *, condition: str, cond_drop_prob: float) -> None:
        super().__init__()
        self.gpt = pipe.gpt
        self.head = getattr(pipe, "head", None)
        self._pipe = [pipe]  # not a submodule: the frozen tokenizer is not trained
        self.condition, self.cond_drop_prob = condition, cond_drop_prob

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        if self.condition == "text":
            prompts = [caption(int(c)) for c in labels]
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


class Trainer:
    """Train what ``cfg`` describes. ``Trainer(cfg).fit(resume="latest")`` continues from the newest checkpoint."""

    def __init__(self, cfg: TrainConfig, *, accelerator: Accelerator | None = None) -> None:
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.accelerator = accelerator or Accelerator(
            mixed_precision=cfg.optim.mixed_precision, gradient_accumulation_steps=cfg.optim.grad_accum_steps
        )
        set_seed(cfg.seed)
        self.output_dir = Path(cfg.output_dir)
        self.pipe = None
        if cfg.kind == "tokenizer":
            self.model = build_tokenizer(cfg.tokenizer)
            objective: nn.Module = _TokenizerObjective(self.model)
            self.images = build_image_source(cfg.data)
        else:
            self.pipe = build_pipeline(cfg)
            self.model = self.pipe
            objective = _GeneratorObjective(self.pipe, condition=cfg.condition, cond_drop_prob=cfg.cond_drop_prob)
            self.tokens, self.labels = self._generator_tokens()
        params = [p for p in objective.parameters() if p.requires_grad]
        optim = cfg.optim
        optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(
            step, steps=optim.steps, warmup=optim.warmup_steps, schedule=optim.schedule, min_ratio=optim.min_lr_ratio))
        self.objective, self.optimizer, self.scheduler = self.accelerator.prepare(objective, optimizer, scheduler)
        self.ema = EMA(self.accelerator.unwrap_model(self.objective), decay=optim.ema_decay) if optim.ema_decay else None
        if self.ema is not None:
            self.accelerator.register_for_checkpointing(self.ema)
        self.step = 0

    # ---- data ----------------------------------------------------------------------------------------
    def _generator_tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens and labels of the training images: read from ``data.tokens`` shards, or encoded once here."""
        if self.cfg.data.tokens:
            tokens, labels, meta = load_token_shards(self.cfg.data.tokens)
            if meta.get("pipeline") != self.cfg.pipeline:
                raise ValueError(f"data.tokens {self.cfg.data.tokens} were extracted for {meta.get('pipeline')}, not {self.cfg.pipeline}")
            if "latent_mean" in meta:
                self.pipe.head.latent_mean.copy_(torch.tensor(meta["latent_mean"]))
                self.pipe.head.latent_std.copy_(torch.tensor(meta["latent_std"]))
            return tokens, labels
        images = build_image_source(self.cfg.data)
        if getattr(self.pipe, "head", None) is not None:  # continuous tokens: normalise with the data's statistics
            self.pipe.set_latent_statistics(images.batch(list(range(min(len(images), 2048))))["image"])
        return encode_dataset(self.pipe, images, batch_size=256)

    def _batch(self, step: int) -> tuple[Any, ...]:
        acc = self.accelerator
        n = len(self.images) if self.cfg.kind == "tokenizer" else self.tokens.shape[0]
        idx = batch_indices(seed=self.cfg.seed, step=step, batch_size=self.cfg.optim.batch_size, num_items=n,
                            rank=acc.process_index, world_size=acc.num_processes)
        if self.cfg.kind == "tokenizer":
            return (self.images.batch(idx.tolist())["image"].to(acc.device),)
        generator = torch.Generator().manual_seed((self.cfg.seed * 1_000_003 + step) * 4099 + acc.process_index)
        return self.tokens[idx].to(acc.device), self.labels[idx].to(acc.device), generator

    # ---- loop ----------------------------------------------------------------------------------------
    def fit(self, *, resume: str | None = None) -> dict[str, Any]:
        """Train to ``optim.steps``; save checkpoints, the final model and ``eval.json``. Returns the final metrics."""
        cfg, acc = self.cfg, self.accelerator
        if resume is not None:
            self.load_checkpoint(resume)
        log_file = self.output_dir / "metrics.jsonl"
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        sums: dict[str, float] = {}
        start, cpu_start, seen_at_start = time.perf_counter(), time.process_time(), self.step
        self.objective.train()
        while self.step < cfg.optim.steps:
            batch = self._batch(self.step)
            with acc.accumulate(self.objective):
                loss, logs = self.objective(*batch)
                acc.backward(loss)
                if acc.sync_gradients and cfg.optim.grad_clip > 0:
                    acc.clip_grad_norm_(self.objective.parameters(), cfg.optim.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update(acc.unwrap_model(self.objective))
            self.step += 1
            for key, value in {"loss": float(loss.detach()), **logs}.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            if self.step % cfg.log_every == 0 or self.step == cfg.optim.steps:
                count = (self.step - 1) % cfg.log_every + 1
                rate = (self.step - seen_at_start) / (time.perf_counter() - start)
                record = {"step": self.step, "lr": self.scheduler.get_last_lr()[0], "steps_per_s": rate,
                          **{k: v / count for k, v in sums.items()}}
                sums = {}
                if acc.is_main_process:
                    print("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()), flush=True)
                    with log_file.open("a") as f:
                        f.write(json.dumps(record) + "\n")
            if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0 and self.step < cfg.optim.steps:
                self.save_checkpoint()
        train_seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        acc.wait_for_everyone()
        return self.finish(train_seconds=train_seconds, cpu_seconds=cpu_seconds)

    def finish(self, *, train_seconds: float, cpu_seconds: float) -> dict[str, Any]:
        """Evaluate (with EMA weights if kept) and export the model with ``save_pretrained``."""
        acc = self.accelerator
        if self.ema is not None:
            self.ema.copy_to(acc.unwrap_model(self.objective))
        report: dict[str, Any] = {"kind": self.cfg.kind, "steps": self.step, "train_seconds": train_seconds,
                                  "train_cpu_seconds": cpu_seconds, "num_processes": acc.num_processes,
                                  "parameters": sum(p.numel() for p in acc.unwrap_model(self.objective).parameters())}
        if acc.is_main_process:
            acc.unwrap_model(self.objective).eval()
            report["eval"] = self.evaluate()
            export = self.output_dir / ("pipeline" if self.cfg.kind == "generator" else "tokenizer")
            if export.exists():
                shutil.rmtree(export)
            self.model.save_pretrained(str(export))
            (self.output_dir / "eval.json").write_text(json.dumps(report, indent=2))
        acc.wait_for_everyone()
        return report

    def evaluate(self) -> dict[str, Any]:
        """Generators: prompt adherence on the shapes classes. Tokenizers: reconstruction of held-out shapes."""
        from .evaluation import evaluate_generator, evaluate_tokenizer

        if self.cfg.kind == "tokenizer":
            return evaluate_tokenizer(self.model, self.cfg)
        return evaluate_generator(self.pipe, self.cfg, out_dir=self.output_dir)

    # ---- checkpoints ---------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    def save_checkpoint(self) -> Path:
        """``accelerator.save_state`` into a temporary folder, renamed into place once complete; keep the newest K."""
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
            (tmp / STATE_FILE).write_text(json.dumps({"step": self.step}))
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            for old in list_checkpoints(self.checkpoint_dir)[: -self.cfg.checkpoint.keep]:
                shutil.rmtree(old)
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, which: str) -> None:
        """Restore model, optimiser, scheduler, EMA and RNG states from ``which`` ("latest" or a folder)."""
        if which == "latest":
            found = list_checkpoints(self.checkpoint_dir)
            if not found:
                raise FileNotFoundError(f"--resume latest: no checkpoint in {self.checkpoint_dir}")
            folder = found[-1]
        else:
            folder = Path(which)
        state_file = folder / STATE_FILE
        if not state_file.is_file():
            raise ValueError(f"{folder} is not a complete checkpoint: {STATE_FILE} is missing")
        self.accelerator.load_state(str(folder))
        self.step = int(json.loads(state_file.read_text())["step"])


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first (temporary folders of an interrupted save are skipped)."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


@torch.no_grad()
def encode_dataset(pipe: Any, images: Any, *, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of ``images`` through ``pipe.tokenize``: ``(tokens, class labels)`` on the CPU."""
    tokens, labels = [], []
    for start in range(0, len(images), batch_size):
        batch = images.batch(list(range(start, min(start + batch_size, len(images)))))
        tokens.append(pipe.tokenize(batch["image"].to(pipe.device)).cpu())
        labels.append(torch.as_tensor(batch["class_id"]))
    return torch.cat(tokens), torch.cat(labels)


def train(cfg: TrainConfig, *, resume: str | None = None) -> dict[str, Any]:
    """Build a :class:`Trainer` for ``cfg`` and run it."""
    return Trainer(cfg).fit(resume=resume)

