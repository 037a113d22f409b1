"""The worst-case suite (``unlearnkit bench worstcase-digits``): random versus worst-case forget sets.

For each seed: train (or load) the original model, select a worst-case forget set with the bi-level
selector (``selection.worstcase``; written to ``DIR/worst-seed{N}.json``), draw a random forget set of the
same size, and run every method of the suite from the same original on both sets. A row holds
``UA_random``, ``UA_worst``, ``RA_*``, ``TA_*``, ``MIA_*`` (percent) and ``gap_*`` (Avg. Gap to retrain on
the same set). A suite config has ``kind: worstcase``, a ``size`` (count, fraction or ``"10%"``), an
optional ``granularity`` (``example`` or ``class``) and an optional ``select:`` section.

Rows go through the shared row loop (``bench/loop.py``): each (method, seed, set) is stored in
``DIR/runs.sqlite`` as it finishes and reused on a rerun, the selection too; curves go to
``DIR/curves/<method>-seed<k>-random.json`` and ``...-worst.json``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
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
    fresh: bool = False,
) -> dict[str, Any]:
    """Run a loaded ``kind: worstcase`` suite config; writes ``results.json`` and ``results.md``.

    The store keeps one row per seed for the selection (kind ``selection``: its ids, so a resumed run does
    not select again) and one row per (method, seed, set) (``set`` = random or worst, tag of its curve).
    """
    from unlearnkit.bench.loop import SuiteRunner
    from unlearnkit.bench.suite import markdown_table, select_methods
    from unlearnkit.selection.runner import GRANULARITIES, split_suite_config

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
    opts = {"size": size, "granularity": granularity, "select": asdict(sel)}
    with SuiteRunner(out, suite_name, family, seeds * (1 + 2 * len(specs)), fresh, progress) as runner:
        for seed in range(seeds):
            seed_rows, selection = _worst_seed(runner, base, seed, specs, sel, opts, family)
            rows += seed_rows
            selections.append(selection)
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


def _worst_seed(
    runner: Any,
    base: dict[str, Any],
    seed: int,
    specs: dict[str, dict],
    sel: Any,
    opts: dict[str, Any],
    family: str,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One seed: the selection (stored or run), then every method on the random and the worst-case set."""
    from unlearnkit.bench.loop import Lazy, Outcome, seed_inputs
    from unlearnkit.experiment import build_method, evaluate_model, run_method
    from unlearnkit.io import weights_sha256
    from unlearnkit.metrics.vision import avg_gap
    from unlearnkit.runs.store import config_hash
    from unlearnkit.selection.runner import payload, run_selection

    suite_name, out = runner.suite, runner.out
    size, granularity = opts["size"], opts["granularity"]
    scfg, setup, original = seed_inputs(runner, base, seed)
    sel_identity = {
        "suite": suite_name,
        "kind": "worstcase-selection",
        "config": scfg,
        # the lower level takes the suite's options for its method ("auto" picks retrain or ft)
        "lower": {k: specs[k] for k in (sel.lower, "retrain", "ft") if k in specs},
    } | opts

    def select() -> Outcome:
        res = run_selection(setup(), original()[0].model, size, sel, specs, granularity)
        obj = payload(res, suite_name, seed, granularity, len(setup().data.train))
        metrics = {"seconds": res.seconds, "best_iter": res.best_iter, "lower_steps": res.lower_steps}
        return Outcome(metrics, fields={"payload": obj, "units": list(res.units)})

    chosen = runner.row(sel_identity, None, seed, select, kind="selection")
    obj = chosen.fields["payload"]
    ids_file = out / f"worst-seed{seed}.json"
    write_json(ids_file, obj)
    picked = SimpleNamespace(ids=obj["ids"], size=obj["units"], units=chosen.fields["units"])
    selection = {"seed": seed, "ids_file": ids_file.name, "seconds": obj["seconds"]}
    selection |= {"best_iter": obj["best_iter"], "lower_steps": obj["lower_steps"]}
    selection |= {"trajectory": obj["trajectory"]}
    tags = ("random", "worst")
    splits = Lazy(lambda: dict(zip(tags, _splits(setup(), picked, granularity, seed), strict=True)))
    by_set: dict[str, dict[str, dict[str, Any]]] = {}
    for tag in tags:
        for mname, spec in specs.items():
            identity = {
                "suite": suite_name,
                "kind": "worstcase",
                "config": scfg,
                "method": spec,
                "set": tag,
                "selection": config_hash(sorted(obj["ids"])) if tag == "worst" else None,
            } | opts

            def compute(tag=tag, spec=spec) -> Outcome:
                orig, before = original()
                split = splits()[tag]
                sub = setup().with_split(split)
                model, seconds, fit = run_method(sub, orig.model, build_method(spec, family))
                receipt = {
                    "forget_ids_sha256": split.forget_ids_sha256(),
                    "forget_count": len(split.forget),
                    "weights_before_sha256": before,
                    "weights_after_sha256": weights_sha256(model),
                }
                metrics = evaluate_model(sub, model, original=orig) | {"RTE": seconds}
                return Outcome(metrics, fields={"set": tag}, receipt=receipt, history=fit.history)

            res = runner.row(identity, mname, seed, compute, tag=tag)
            by_set.setdefault(mname, {})[tag] = res.public
    rows = []
    for mname, sets in by_set.items():
        metrics: dict[str, float] = {}
        for tag, m in sets.items():
            metrics |= {f"{k}_{tag}": m[k] for k in ("UA", "RA", "TA", "MIA", "RTE")}
            if "retrain" in by_set:
                metrics[f"gap_{tag}"] = avg_gap(m, by_set["retrain"][tag])
        rows.append({"method": mname, "seed": seed, "metrics": metrics})
    return rows, selection
