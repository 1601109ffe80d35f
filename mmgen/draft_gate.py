"""Whether drafting pays on this machine: speculative steps where they give more tokens per second, plain ones elsewhere.

A verify forward of 1 + N positions costs more than a plain step: every node is a row of every
matmul (on a CPU most of the cost) and building the tree, walking it and moving the kept path in the
cache take time of their own. A draft the target rarely confirms therefore loses time, and
whether one pays depends on the source, the model, the prompt and the machine. :class:`DraftGate`
measures what decides it while decoding: the tokens a drafting step keeps (a quick average, since a
source's quality moves with the prompt) and the seconds of a drafting and of a plain step (slow
averages, since single step times on a shared machine are noisy), the source's own proposing
included; it drafts while ``tokens / drafting seconds > margin / plain seconds``. While plain steps
win it asks the source again now and then: a probe of ``probe_length`` steps running after
``probe_every`` plain steps, the wait doubling after each probe that does not pay (up to
``max_probe_every``), so a source that gets better (an n-gram source that has seen more) is noticed.
While drafting wins it takes one plain step every ``refresh_every`` steps to keep that time current.
No decision changes a token: verification keeps plain decoding's tokens whatever is drafted.
"""

from __future__ import annotations

import time
from typing import Callable

from .tokens import _check_positive

__all__ = ["DraftGate"]


class _Mean:
    """A decaying average: each older value keeps ``decay`` of its weight per new one."""

    def __init__(self, decay: float) -> None:
        self.decay, self.total, self.weight = decay, 0.0, 0.0

    def add(self, value: float) -> None:
        self.total = self.decay * self.total + value
        self.weight = self.decay * self.weight + 1.0

    @property
    def value(self) -> float | None:
        return self.total / self.weight if self.weight else None


class DraftGate:
    """Decides per step whether to ask the draft source (see module docstring); one per source and model.

    ``token_decay`` / ``time_decay``: how fast the averages of kept tokens and of step times forget
    (0.9 remembers about 10 steps, 0.98 about 50). A probe asks the source ``probe_length`` steps
    running (an iterative source such as Jacobi needs a few to show what it does). ``clock``: seconds
    (a test passes a fake one). A pipeline keeps one gate per decoding source, so what it measured
    carries over from call to call.
    """

    def __init__(self, *, token_decay: float = 0.95, time_decay: float = 0.98, margin: float = 1.05, probe_length: int = 4,
                 probe_every: int = 8, max_probe_every: int = 256, refresh_every: int = 64,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        for name, value in (("token_decay", token_decay), ("time_decay", time_decay)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin > 0:
            raise ValueError(f"margin must be a positive number (1: draft whenever it is the faster), got {margin!r}")
        for name, value in (("probe_length", probe_length), ("probe_every", probe_every),
                            ("max_probe_every", max_probe_every), ("refresh_every", refresh_every)):
            _check_positive(name, value)
        self.probe_length, self.probe_every = probe_length, probe_every
        self.max_probe_every, self.refresh_every = max_probe_every, refresh_every
        if self.max_probe_every < self.probe_every:
            raise ValueError(f"max_probe_every ({max_probe_every}) must be at least probe_every ({probe_every})")
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds, got {type(clock).__name__}")
        self.margin, self.clock = float(margin), clock
        self.draft_tokens = _Mean(token_decay)  # tokens a drafting step keeps
        self.draft_seconds = _Mean(time_decay)  # seconds of a drafting step
        self.plain_seconds = _Mean(time_decay)  # seconds of a plain step (one token)
        self.drafting = True  # the mode: ask the source every step
        self._interval = self.probe_every  # plain steps between probes
        self._probe_left = 0  # asked steps left in the running probe
        self._probe_drafted = 0  # ... and how many of its steps had a draft
        self._since_asked = 0
        self._since_plain = 0
        self._asked = False
        self._started: float | None = None

    @property
    def plain_rate(self) -> float | None:
        """Tokens per second of plain steps (None before one was timed)."""
        seconds = self.plain_seconds.value
        return None if seconds is None else 1.0 / max(seconds, 1e-12)

    @property
    def draft_rate(self) -> float | None:
        """Tokens per second of drafting steps (None before one was timed)."""
        tokens, seconds = self.draft_tokens.value, self.draft_seconds.value
        return None if tokens is None else tokens / max(seconds, 1e-12)

    def wants_draft(self) -> bool:
        """Whether this step asks the source for a draft (False: a plain step); starts the step's clock."""
        self._started = self.clock()
        if self.plain_rate is None or (self.drafting and self._since_plain >= self.refresh_every):
            self._asked = False  # time (or re-time) a plain step first
        elif self.drafting or self._probe_left:
            self._asked = True
        else:
            self._asked = self._since_asked >= self._interval
            self._probe_left = self.probe_length if self._asked else 0
        return self._asked

    def end_step(self, *, tokens: int, drafted: bool) -> None:
        """The step begun by :meth:`wants_draft` kept ``tokens`` tokens; ``drafted``: it verified a draft.

        A step the source had no draft for counts as a plain one (it was one, plus the asking).
        """
        if self._started is None:
            raise RuntimeError("end_step needs a step begun by wants_draft()")
        seconds, self._started = self.clock() - self._started, None
        if drafted:
            self.draft_tokens.add(tokens)
            self.draft_seconds.add(seconds)
        else:
            self.plain_seconds.add(seconds / max(tokens, 1))
        self._since_asked = 0 if self._asked else self._since_asked + 1
        self._since_plain = self._since_plain + 1 if drafted else 0
        if self._asked and not self.drafting:
            self._probe_left -= 1
            self._probe_drafted += drafted
            if self._probe_left == 0:  # the verdict; a probe that does not pay (or had no draft) doubles the wait
                self.drafting = self._probe_drafted > 0 and self._pays()
                self._probe_drafted = 0
                self._interval = self.probe_every if self.drafting else min(2 * self._interval, self.max_probe_every)
        elif drafted and self.draft_tokens.weight >= self.probe_length - 1:
            self.drafting = self._pays()

    def _pays(self) -> bool:
        draft, plain = self.draft_rate, self.plain_rate
        return draft is not None and plain is not None and draft > self.margin * plain
