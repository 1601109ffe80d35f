"""Stopping a run cleanly: Ctrl-C or SIGTERM ends the current step, saves a checkpoint and exits.

A kill between checkpoints loses the steps since the last one; a signal loses nothing, because the
trainer turns it into a request that it honours at the next step boundary (:class:`StopRequests`).
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["StopRequests", "TrainingInterrupted"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by ``Trainer.fit`` after a stop signal, once the checkpoint of ``step`` is on disk.

    A ``KeyboardInterrupt``, so ``except Exception`` in user code does not swallow a Ctrl-C.
    """

    def __init__(self, *, signal_name: str, step: int, checkpoint: Path) -> None:
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        super().__init__(f"{signal_name} at step {step}: saved checkpoint {checkpoint}; continue with --resume latest")


class StopRequests:
    """While active, SIGINT and SIGTERM only record that a stop was asked for; a second one aborts at once.

    Handlers can only be installed from the main thread; elsewhere (a trainer driven from a worker thread)
    signals keep their usual effect.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:  # asked twice: the user does not want to wait for the checkpoint
            self.__exit__()
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        print(f"\n{self.received}: stopping after this step and saving a checkpoint "
              "(press Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)
