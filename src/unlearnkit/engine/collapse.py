"""The collapse guard: a loss far outside the range the run started in.

A learning rate far too high does not always give a NaN: gradient ascent at ``method.lr=1e3`` on a small
LM takes the forget NLL from 2.8 to 6·10⁶ in one step and the retain NLL with it, the model generates
nothing useful (model utility 0), and every loss stays finite. The guard compares each watched value of
a step with the value the same phase logged at the run's first logged step, and stops the run when

    |value| > collapse_factor · max(|first value|, 1)

The watched values are the step loss and the method's logged ``forget_loss`` and ``retain_loss`` (the
names every method uses for its two terms). The floor of 1 keeps a loss that starts near 0 (a KL retain
term, a GradDiff sum whose two terms cancel) from firing on ordinary growth. ``engine.collapse_factor``
(default 100: an NLL of a few nats per token would have to pass several hundred; the existing suites stay
below a factor of 10) sets the bound; ``null`` turns the guard off. The references come from the run's
history, so a resumed run keeps those of the run it continues.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

WATCHED = ("loss", "forget_loss", "retain_loss")


def _numbers(values: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: float(values[k])
        for k in WATCHED
        if isinstance(values.get(k), (int, float)) and not isinstance(values.get(k), bool)
    }


class CollapseWatch:
    """The first logged value of each watched loss, per phase, and the check against them."""

    def __init__(self, factor: float | None, history: Iterable[Mapping[str, Any]] = ()) -> None:
        self.factor = factor
        self.first: dict[tuple[str, str], float] = {}
        for rec in history:
            self.note(rec)

    def note(self, record: Mapping[str, Any]) -> None:
        """Take a logged step record's values as references where its phase has none yet."""
        phase = str(record.get("phase"))
        for k, v in _numbers(record).items():
            self.first.setdefault((phase, k), v)

    def check(self, phase: str, values: Mapping[str, Any]) -> tuple[str, float, float] | None:
        """``(name, value, first value)`` of the first watched value past its bound, else None."""
        if self.factor is None:
            return None
        for k, v in _numbers(values).items():
            ref = self.first.get((phase, k))
            if ref is not None and abs(v) > self.factor * max(abs(ref), 1.0):
                return k, v, ref
        return None
