"""Run a suite (``unlearnkit bench vision-digits``): load its preset, find its kind in the registry
(``bench/kinds.py``) and run it.

The kinds: ``plain`` (``bench/plain.py``: every method from the same original, compared with the oracle),
``worstcase`` (``bench/worstcase.py``: random vs worst-case forget sets), ``sequential``
(``bench/sequential.py``: MUSE's unlearning requests) and ``composite`` (``bench/composite.py``: several
suites into sub-folders, then the report). Each writes ``DIR/results.json`` in the common schema
(``bench/results.py``) and ``DIR/results.md``; every row is indexed in ``DIR/runs.sqlite`` as it finishes
and reused by a later run of the same configuration (``fresh=True`` / ``--fresh`` recomputes).

Rows are computed by a :class:`~unlearnkit.bench.rows.RowRunner`: pass ``runner=`` to observe or replace
how originals, oracles, methods and metrics are computed (what tests do instead of patching).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unlearnkit.bench import composite, plain, sequential, worstcase  # noqa: F401  (they register)
from unlearnkit.bench.kinds import SuiteRequest, get_kind
from unlearnkit.bench.results import (
    load_suite,
    markdown_table,
    public,
    select_methods,
    suite_preset,
    summarize,
)
from unlearnkit.bench.rows import RowRunner
from unlearnkit.bench.tables import print_table
from unlearnkit.config import load_preset, refuse_ignored
from unlearnkit.errors import ConfigError

__all__ = [
    "RowRunner",
    "load_suite",
    "markdown_table",
    "print_table",
    "public",
    "run_suite",
    "select_methods",
    "summarize",
]


# config keys a suite run sets itself: an override of one would change nothing, so it is refused
SET_BY_BENCH = {
    "seed": "a suite runs seeds 0..N-1: pass --seeds N",
    "out": "a suite writes where --out DIR says",
    "eval.oracle": (
        "a suite always runs its retrain row, the oracle every method is compared with; oracle.* keys "
        "say where it comes from (e.g. oracle.stats=FILE)"
    ),
}


def run_suite(
    name: str,
    seeds: int | None,
    out: str | Path,
    methods: list[str] | None = None,
    overrides: list[str] | None = None,
    progress: bool = True,
    fresh: bool = False,
    runner: RowRunner | None = None,
    report: Callable[[Path], dict[str, Path]] | None = None,
    tune: bool = False,
) -> dict[str, Any]:
    """Run suite ``name`` over seeds ``0..seeds-1`` into ``out``; rows already in ``out``'s run store (same
    configuration) are reused unless ``fresh``, so rerunning a killed command resumes it.

    ``seeds=None`` means 1, or for a composite suite (``kind: composite``, e.g. ``quick``) each part's own
    seed count; ``runner`` computes the rows (default :class:`RowRunner`); ``report`` writes a composite
    suite's report (``unlearnkit.report.build_report``). ``tune`` (plain suites of classifiers) runs each
    method with the lr and epochs ``unlearnkit tune`` picks for that seed's original and data, without the
    oracle; the rows record them."""
    if seeds is not None and seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "suites run in one process (their rows, store and report are written by one writer); launch "
            "single runs with several processes instead: accelerate launch ... -m unlearnkit.cli unlearn"
        )
    refuse_ignored(list(overrides or []), SET_BY_BENCH)  # also a composite part's, before any part runs
    raw = load_preset(suite_preset(name))
    kind = get_kind(raw.get("kind"))
    cfg = raw if kind.parts else load_suite(name, overrides)
    kind = kind if kind.parts else get_kind(cfg.get("kind"))
    if tune and kind.name != "plain":
        raise ConfigError(
            f"--tune calibrates the methods of a plain suite (e.g. vision-digits); {name!r} is a "
            f"{kind.name} suite"
        )
    request = SuiteRequest(
        name,
        cfg,
        seeds,
        Path(out),
        methods,
        list(overrides or []),
        progress,
        fresh,
        runner or RowRunner(),
        run_suite,
        report,
        tune,
    )
    return kind.run(request)
