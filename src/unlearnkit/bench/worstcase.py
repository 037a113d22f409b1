"""The worst-case suite (``unlearnkit bench worstcase-digits``): random versus worst-case forget sets.

For each seed: train (or load) the original model, select a worst-case forget set with the bi-level
selector (``selection.worstcase``; written to ``DIR/worst-seed{N}.json``), draw a random forget set of the
same size, and run every method of the suite from the same original on both sets. A row holds
each headline metric of the suite's protocol per set (``UA_random``, ``UA_worst``, ``RA_*``, ``TA_*``,
``MIA_*``, ``RTE_*`` for classifiers) and the protocol's comparison with retrain on the same set (``gap_*``:
Avg. Gap). A suite config has ``kind: worstcase``, a ``size`` (count, fraction or ``"10%"``), an
optional ``granularity`` (``example`` or ``class``) and an optional ``select:`` section.

Rows go through the shared row loop (``bench/loop.py``): each (method, seed, set) is stored in
``DIR/runs.sqlite`` as it finishes and reused on a rerun, the selection too; curves go to
``DIR/curves/<method>-seed<k>-random.json`` and ``...-worst.json``.
"""

from __future__ import annotations

from dataclasses import asdict
from types import SimpleNamespace
from typing import Any

import numpy as np

from unlearnkit.bench.kinds import SuiteRequest, register_kind
from unlearnkit.bench.loop import Lazy, Outcome, SuiteRunner
from unlearnkit.bench.plain import protocol_name
from unlearnkit.bench.results import markdown_table, oracle_first, select_methods, suite_result, write_results
from unlearnkit.bench.rows import ORACLE, RowRunner, receipt, seed_inputs
from unlearnkit.data.splits import class_split, ids_split, random_split
from unlearnkit.errors import ConfigError
from unlearnkit.experiment import DEFAULTS, build_method
from unlearnkit.io import weights_sha256, write_json
from unlearnkit.protocols import Protocol
from unlearnkit.registry import get_protocol
from unlearnkit.runs.store import config_hash
from unlearnkit.selection.runner import GRANULARITIES, payload, split_suite_config

TAGS = ("random", "worst")
CAPTION = (
    "{caption} *_random: a random forget set; *_worst: the bi-level worst-case set of the same size; "
    "{gap} compares with retrain on the same set."
)


def set_keys(protocol: type[Protocol]) -> tuple[list[str], list[str]]:
    """(metrics kept per forget set, the table's columns): the protocol's headline per set; the columns
    leave out RTE (the cost, not a result) and pair each metric's random and worst-case values."""
    per_set = [k for k in protocol.headline if k != protocol.gap_key]
    shown = [k for k in protocol.headline if k != "RTE"]
    return per_set, [f"{k}_{s}" for k in shown for s in TAGS]


def _splits(setup: Any, res: Any, granularity: str, seed: int) -> tuple[Any, Any]:
    """(random split, worst-case split) of the same size: m examples, or m classes."""
    train, test = setup.data.train, setup.data.test
    if granularity == "class":
        classes = sorted(int(c) for c in train.labels.unique().tolist())
        drawn = np.random.RandomState(seed).choice(classes, size=res.size, replace=False)
        return class_split(train, test, sorted(int(c) for c in drawn)), class_split(train, test, res.units)
    return random_split(train, test, res.size, seed), ids_split(train, test, res.ids)


@register_kind("worstcase")
def run_worstcase_suite(req: SuiteRequest) -> dict[str, Any]:
    """Run a loaded ``kind: worstcase`` suite config; writes ``results.json`` and ``results.md``.

    The store keeps one row per seed for the selection (kind ``selection``: its ids, so a resumed run does
    not select again) and one row per (method, seed, set) (``set`` = random or worst, tag of its curve).
    """
    cfg, seeds = req.cfg, req.n_seeds
    size, granularity = cfg.get("size", "10%"), cfg.get("granularity", "example")
    if granularity not in GRANULARITIES:
        raise ConfigError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    suite_name = cfg.get("suite", req.name)
    base, specs, sel = split_suite_config(cfg)
    family = base.get("family", DEFAULTS["family"])
    specs = oracle_first(select_methods(specs, req.methods, req.name, family))
    base.setdefault("engine", {})["progress"] = False
    rows: list[dict[str, Any]] = []
    selections: list[dict[str, Any]] = []
    opts = {"size": size, "granularity": granularity, "select": asdict(sel)}
    total = seeds * (1 + 2 * len(specs))
    first: Lazy | None = None
    with SuiteRunner(req.out, suite_name, family, total, req.fresh, req.progress) as loop:
        for seed in range(seeds):
            seed_rows, selection, setup = _worst_seed(loop, req.runner, base, seed, specs, sel, opts)
            rows += seed_rows
            selections.append(selection)
            first = first or setup
        assert first is not None
        protocol = protocol_name(loop, first)
    proto = get_protocol(protocol)
    caption = CAPTION.format(caption=proto.caption, gap=proto.gap_key)
    result = suite_result(
        suite_name, "worstcase", protocol, seeds, base, specs, set_keys(proto)[1], caption, rows,
        size=size, granularity=granularity, select=asdict(sel), selection=selections,
    )  # fmt: skip
    write_results(req.out, result, markdown_table(result))
    return result


def _select(
    loop: SuiteRunner,
    runner: RowRunner,
    scfg: dict,
    seed: int,
    inputs: tuple,
    specs: dict,
    sel: Any,
    opts: dict,
) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """The seed's worst-case selection (stored or run): (its payload, the picked units, the summary)."""
    setup, original = inputs
    size, granularity = opts["size"], opts["granularity"]
    sel_identity = {
        "suite": loop.suite,
        "kind": "worstcase-selection",
        "config": scfg,
        # the lower level takes the suite's options for its method ("auto" picks retrain or ft)
        "lower": {k: specs[k] for k in (sel.lower, "retrain", "ft") if k in specs},
    } | opts

    def select() -> Outcome:
        res = runner.select(setup(), original()[0].model, size, sel, specs, granularity)
        obj = payload(res, loop.suite, seed, granularity, len(setup().data.train))
        metrics = {"seconds": res.seconds, "best_iter": res.best_iter, "lower_steps": res.lower_steps}
        return Outcome(metrics, fields={"payload": obj, "units": list(res.units)})

    chosen = loop.row(sel_identity, None, seed, select, kind="selection")
    obj = chosen.fields["payload"]
    ids_file = loop.out / f"worst-seed{seed}.json"
    write_json(ids_file, obj)
    picked = SimpleNamespace(ids=obj["ids"], size=obj["units"], units=chosen.fields["units"])
    selection = {"seed": seed, "ids_file": ids_file.name, "seconds": obj["seconds"]}
    selection |= {"best_iter": obj["best_iter"], "lower_steps": obj["lower_steps"]}
    selection |= {"trajectory": obj["trajectory"]}
    return obj, picked, selection


def _worst_seed(
    loop: SuiteRunner,
    runner: RowRunner,
    base: dict[str, Any],
    seed: int,
    specs: dict[str, dict],
    sel: Any,
    opts: dict[str, Any],
) -> tuple[list[dict[str, Any]], dict[str, Any], Lazy]:
    """One seed: the selection (stored or run), then every method on the random and the worst-case set,
    each compared with retrain on the same set."""
    scfg, setup, original = seed_inputs(loop, runner, base, seed)
    obj, picked, selection = _select(loop, runner, scfg, seed, (setup, original), specs, sel, opts)
    splits = Lazy(lambda: dict(zip(TAGS, _splits(setup(), picked, opts["granularity"], seed), strict=True)))
    by_set: dict[str, dict[str, dict[str, Any]]] = {}
    for tag in TAGS:
        oracle: dict[str, Any] | None = None
        oracle_key: str | None = None
        for mname, spec in specs.items():
            identity = {
                "suite": loop.suite,
                "kind": "worstcase",
                "config": scfg,
                "method": spec,
                "set": tag,
                "selection": config_hash(sorted(obj["ids"])) if tag == "worst" else None,
                "oracle": None if mname == ORACLE else oracle_key,
            } | opts

            def compute(
                tag: str = tag, spec: dict = spec, ref: Any = oracle, is_oracle: bool = mname == ORACLE
            ) -> Outcome:
                orig, before = original()
                sub = setup().with_split(splits()[tag])
                model, seconds, fit = runner.run_method(sub, orig.model, build_method(spec, sub.family.name))
                metrics = runner.evaluate(sub, model, "self" if is_oracle else ref, orig) | {"RTE": seconds}
                rec = receipt(sub, before, weights_sha256(model))
                return Outcome(metrics, fields={"set": tag}, receipt=rec, history=fit.history)

            res = loop.row(identity, mname, seed, compute, tag=tag)
            if mname == ORACLE:
                oracle, oracle_key = res.metrics, res.key
            by_set.setdefault(mname, {})[tag] = res.public
    return _rows(by_set, seed, loop, setup), selection, setup


def _rows(by_set: dict[str, dict[str, dict]], seed: int, loop: SuiteRunner, setup: Lazy) -> list[dict]:
    """One row per method: each kept metric suffixed with its set."""
    per_set, _ = set_keys(get_protocol(protocol_name(loop, setup)))
    gap = get_protocol(protocol_name(loop, setup)).gap_key
    rows = []
    for mname, sets in by_set.items():
        metrics: dict[str, float] = {}
        for tag, m in sets.items():
            metrics |= {f"{k}_{tag}": m[k] for k in per_set}
            if gap in m:
                metrics[f"{gap}_{tag}"] = m[gap]
        rows.append({"method": mname, "seed": seed, "metrics": metrics})
    return rows
