"""Run ``mmgen train CONFIG`` and SIGKILL it when step N begins: a hard crash between checkpoints, for the tests.

Usage: ``python tests/training_interrupt.py CONFIG N``. The process dies without any clean-up, as it would
when a machine is preempted or the job is killed, so what it leaves on disk is what a resume must cope with.
"""

from __future__ import annotations

import os
import signal
import sys

from mmgen.app.cli import main
from mmgen.app.training.trainer import Trainer


def kill_when_step_begins(step: int) -> None:
    """Make every Trainer SIGKILL its own process just before it trains ``step`` (0-based)."""
    train_step = Trainer._train_step

    def killing_train_step(self: Trainer, batch: tuple) -> dict[str, float]:
        if self.step == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return train_step(self, batch)

    Trainer._train_step = killing_train_step


if __name__ == "__main__":
    config, kill_step = sys.argv[1], int(sys.argv[2])
    kill_when_step_begins(kill_step)
    raise SystemExit(main(["train", config]))
