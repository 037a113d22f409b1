"""Progress of a suite's rows: rich bars on a terminal, one flushed line per finished row otherwise.

Under CI, ``nohup``, a cluster job or ``> log`` there is no terminal to draw bars on, and a bar that is
redrawn in place would leave nothing in the log until the end. There, each finished row prints one line::

    vision-digits: ga seed 1 done in 12.3 s (5/8, elapsed 1 min 02 s, about 37 s left)

The time left is the mean time of the rows computed so far times the rows still to do (rows reused from the
run store take no time and do not count in the mean)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


def duration(seconds: float) -> str:
    """``12.3 s``, ``4 min 05 s`` or ``1 h 02 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class RowProgress:
    """Shows a suite's progress on ``stream`` (default stdout): bars when it is a terminal, else lines.

    ``enabled=False`` (``--quiet``) shows nothing; ``clock`` is injectable for tests."""

    def __init__(
        self,
        suite: str,
        total: int,
        enabled: bool = True,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.suite, self.total, self.enabled = suite, total, enabled
        self.stream = stream if stream is not None else sys.stdout
        self.clock = clock
        self.done = 0
        self.computed_seconds = 0.0
        self.computed = 0
        self.t0 = clock()
        self.bars = enabled and _is_terminal(self.stream)
        self._bar: Progress | None = None

    def __enter__(self) -> RowProgress:
        self.t0 = self.clock()
        if self.bars:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
                transient=True,
            )
            self._bar.__enter__()
            self._job = self._bar.add_task(self.suite, total=self.total)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None

    def say(self, text: str) -> None:
        """What runs now (shown next to the bar; logs get only finished rows)."""
        if self._bar is not None:
            self._bar.update(self._job, description=f"{self.suite} {text}")

    def finished(self, label: str, seconds: float | None) -> None:
        """Row ``label`` finished, computed in ``seconds`` (None: reused from the store)."""
        self.done += 1
        if seconds is not None:
            self.computed += 1
            self.computed_seconds += seconds
        if self._bar is not None:
            self._bar.advance(self._job)
        elif self.enabled:
            print(self.line(label, seconds), file=self.stream, flush=True)

    def line(self, label: str, seconds: float | None) -> str:
        """The log line of a finished row."""
        how = "stored, reused" if seconds is None else f"done in {duration(seconds)}"
        left = self.total - self.done
        eta = ""
        if left > 0 and self.computed:
            eta = f", about {duration(left * self.computed_seconds / self.computed)} left"
        elapsed = duration(self.clock() - self.t0)
        return f"{self.suite}: {label} {how} ({self.done}/{self.total}, elapsed {elapsed}{eta})"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
