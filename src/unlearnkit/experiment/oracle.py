"""The oracle's flat result for an experiment, from whichever source its ``oracle:`` section names: the one
function ``unlearnkit unlearn``, ``unlearnkit evaluate`` and the suites' oracle rows go through."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from unlearnkit.experiment.cache import oracle_model
from unlearnkit.experiment.oracle_source import read_stats, write_stats
from unlearnkit.experiment.run import build_method, evaluate_model
from unlearnkit.experiment.setup import Setup
from unlearnkit.families.base import Original
from unlearnkit.methods.base import Method


@dataclass(frozen=True)
class Oracle:
    """The oracle of a run: its flat evaluation (public and ``_`` private values, plus ``RTE``), its model
    (None when read from a stats file), the seconds it cost here, and where it came from."""

    flat: dict[str, Any]
    model: nn.Module | None
    seconds: float
    source: dict[str, Any]


def wants_oracle(setup: Setup) -> bool:
    """Whether a run compares with an oracle: ``eval.oracle=true``, or an ``oracle:`` source given."""
    return bool(getattr(setup.protocol.cfg, "oracle", False)) or setup.oracle.kind is not None


def resolve_oracle(
    setup: Setup,
    original: Original,
    method: Method | None = None,
    *,
    train: Callable[[Setup, Method, nn.Module], tuple[nn.Module, float]] = oracle_model,
    evaluate: Callable[..., dict[str, Any]] = evaluate_model,
) -> Oracle:
    """The oracle of ``setup``: the stored values of ``oracle.stats``, or the oracle model (given, fine-tuned
    from ``oracle.base``, or ``method`` — default ``retrain`` — from scratch: :func:`oracle_model`)
    evaluated against itself (gap 0, forget quality 1, as the papers' tables report it).

    ``train`` and ``evaluate`` are the hooks that build and score the model (a suite's
    :class:`~unlearnkit.bench.rows.RowRunner` passes its own)."""
    src = setup.oracle
    if src.stats is not None:
        flat = dict(read_stats(src.stats)["metrics"])  # checked against this forget set by make_setup
        return Oracle(flat, None, 0.0, src.describe())
    method = method or build_method({"name": "retrain"}, setup.cfg["family"])
    model, seconds = train(setup, method, original.model)
    flat = evaluate(setup, model, "self", original) | {"RTE": seconds}
    return Oracle(flat, model, seconds, src.describe())


def export_oracle(path: str | Path, setup: Setup, oracle: Oracle) -> None:
    """Write ``oracle``'s stats to ``path`` (the format ``oracle.stats=`` reads), atomically."""
    write_stats(path, setup, oracle.flat, oracle.source)
