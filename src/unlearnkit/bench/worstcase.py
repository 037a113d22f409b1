"""The worst-case suite (``unlearnkit bench worstcase-digits``): random versus worst-case forget sets.

For each seed: train (or load) the original model, select a worst-case forget set with the bi-level
selector (``selection.worstcase``; written to ``DIR/worst-seed{N}.json``), draw a random forget set of the
same size, and run every method of the suite from the same original on both sets. A row holds
``UA_random``, ``UA_worst``, ``RA_*``, ``TA_*``, ``MIA_*`` (percent) and ``gap_*`` (Avg. Gap to retrain on
the same set). A suite config has ``kind: worstcase``, a ``size`` (count, fraction or ``"10%"``), an
optional ``granularity`` (``example`` or ``class``) and an optional ``select:`` section.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from unlearnkit.errors import ConfigError
from unlearnkit.io import write_json, write_text

WORST_KEYS = tuple(
    f"{k}_{s}" for k in ("UA", "RA", "TA", "MIA", "gap") for s in ("random", "worst")
)  # fmt: skip
CAPTION = (
    "UA, RA, TA, MIA in %. *_random: a random forget set; *_worst: the bi-level worst-case set of the same "
    "size (lower UA = harder to forget); gap = Avg. Gap to retrain on the same set."
)


def _splits(setup, res, granularity: str, seed: int):
    """(random split, worst-case split) of the same size: m examples, or m classes."""
    from unlearnkit.data.splits import class_split, ids_split, random_split

    train, test = setup.data.train, setup.data.test
    if granularity == "class":
        classes = sorted(int(c) for c in train.labels.unique().tolist())
        drawn = np.random.RandomState(seed).choice(classes, size=res.size, replace=False)
        return class_split(train, test, sorted(int(c) for c in drawn)), class_split(train, test, res.units)
    return random_split(train, test, res.size, seed), ids_split(train, test, res.ids)


def run_worstcase_suite(
    cfg: dict[str, Any],
    name: str,
    seeds: int,
    out: str | Path,
    methods: list[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run a loaded ``kind: worstcase`` suite config; writes ``results.json`` and ``results.md``."""
    from rich.progress import Progress

    from unlearnkit.bench.suite import markdown_table, select_methods
    from unlearnkit.metrics.vision import avg_gap
    from unlearnkit.pipeline import build_method, evaluate_model, make_setup, original_model, run_method
    from unlearnkit.selection.runner import GRANULARITIES, payload, run_selection, split_suite_config

    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    size, granularity = cfg.get("size", "10%"), cfg.get("granularity", "example")
    if granularity not in GRANULARITIES:
        raise ConfigError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    suite_name = cfg.get("suite", name)
    base, specs, sel = split_suite_config(cfg)
    family = base.get("family", "vision")
    specs = select_methods(specs, methods, name, family)
    base.setdefault("engine", {})["progress"] = False
    out = Path(out)
    rows: list[dict[str, Any]] = []
    selections: list[dict[str, Any]] = []
    with Progress(disable=not progress, transient=True) as bar:
        job = bar.add_task(suite_name, total=seeds * (1 + 2 * len(specs)))
        for seed in range(seeds):
            setup = make_setup(base | {"seed": seed})
            original, _ = original_model(setup)
            res = run_selection(setup, original, size, sel, specs, granularity)
            ids_file = out / f"worst-seed{seed}.json"
            write_json(ids_file, payload(res, suite_name, seed, granularity, len(setup.data.train)))
            selections.append(
                {"seed": seed, "ids_file": ids_file.name, "seconds": res.seconds, "best_iter": res.best_iter}
                | {"lower_steps": res.lower_steps, "trajectory": res.trajectory}
            )
            bar.advance(job)
            by_set: dict[str, dict[str, dict[str, float]]] = {}
            for tag, split in zip(("random", "worst"), _splits(setup, res, granularity, seed), strict=True):
                setup.split = split
                for mname, spec in specs.items():
                    model, seconds, _ = run_method(setup, original, build_method(spec, family))
                    by_set.setdefault(mname, {})[tag] = evaluate_model(setup, model) | {"RTE": seconds}
                    bar.advance(job)
            for mname, sets in by_set.items():
                metrics: dict[str, float] = {}
                for tag, m in sets.items():
                    metrics |= {f"{k}_{tag}": m[k] for k in ("UA", "RA", "TA", "MIA", "RTE")}
                    if "retrain" in by_set:
                        metrics[f"gap_{tag}"] = avg_gap(m, by_set["retrain"][tag])
                rows.append({"method": mname, "seed": seed, "metrics": metrics})
    result = {
        "suite": suite_name,
        "kind": "worstcase",
        "seeds": seeds,
        "size": size,
        "granularity": granularity,
        "config": base,
        "select": asdict(sel),
        "methods": specs,
        "selection": selections,
        "keys": list(WORST_KEYS),
        "caption": CAPTION,
        "rows": rows,
    }
    write_json(out / "results.json", result)
    write_text(out / "results.md", markdown_table(result, WORST_KEYS))
    return result
