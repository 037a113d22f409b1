"""Run a suite (``unlearnkit bench vision-digits``): for each seed, train (or load) the original model,
retrain the oracle, run every method from the same original, and report each metric with its gap.

``DIR/results.json`` = ``{"suite", "seeds", "config", "methods", "rows": [{"method", "seed", "metrics"}],
"keys", "caption"}`` and ``DIR/results.md`` holds mean ± std per method. Every row is indexed in
``DIR/runs.sqlite`` as it finishes (``runs/store.py``) and reused by a later run of the same configuration
(``fresh=True`` / ``--fresh`` recomputes); training curves go to ``DIR/curves/`` (``bench/loop.py``).
Suites of ``kind: worstcase`` and ``kind: sequential`` run in ``bench/worstcase.py`` and
``bench/sequential.py`` through the same row loop.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

from unlearnkit.config import apply_overrides, load_preset
from unlearnkit.errors import ConfigError
from unlearnkit.io import write_json, write_text

SUITE_KEYS = ("UA", "RA", "TA", "MIA", "RTE", "gap")


def _suite_preset(name: str) -> str:
    return name if "/" in name or name.endswith(".yaml") else f"suites/{name}"


def load_suite(name: str, overrides: list[str] | None = None) -> dict[str, Any]:
    cfg = load_preset(_suite_preset(name))
    cfg = apply_overrides(cfg, overrides or [])
    if not isinstance(cfg.get("methods"), dict) or not cfg["methods"]:
        raise ConfigError(f"suite {name!r} must list its methods under 'methods:'")
    for key, spec in list(cfg["methods"].items()):
        if isinstance(spec, str):  # the name of a preset whose method section to use
            spec = load_preset(spec).get("method", {})
        spec = dict(spec or {})
        spec.setdefault("name", key)
        cfg["methods"][key] = spec
    return cfg


def run_suite(
    name: str,
    seeds: int | None,
    out: str | Path,
    methods: list[str] | None = None,
    overrides: list[str] | None = None,
    progress: bool = True,
    fresh: bool = False,
) -> dict[str, Any]:
    """Run suite ``name`` over seeds ``0..seeds-1`` into ``out``; rows already in ``out``'s run store (same
    configuration) are reused unless ``fresh``, so rerunning a killed command resumes it.

    ``seeds=None`` means 1, or for a composite suite (``kind: composite``, e.g. ``quick``) each part's own
    seed count (bench/composite.py)."""
    if seeds is not None and seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "suites run in one process (their rows, store and report are written by one writer); launch "
            "single runs with several processes instead: accelerate launch ... -m unlearnkit.cli unlearn"
        )
    raw = load_preset(_suite_preset(name))
    if raw.get("kind") == "composite":  # several suites into sub-folders, then the report
        from unlearnkit.bench.composite import run_composite_suite

        return run_composite_suite(raw, name, seeds, out, methods, overrides, progress, fresh)
    seeds = 1 if seeds is None else seeds
    cfg = load_suite(name, overrides)
    if cfg.get("kind") == "worstcase":  # random vs worst-case forget sets (bench/worstcase.py)
        from unlearnkit.bench.worstcase import run_worstcase_suite

        return run_worstcase_suite(cfg, name, seeds, out, methods, progress, fresh)
    if cfg.get("kind") == "sequential":  # MUSE scalability / sustainability (bench/sequential.py)
        from unlearnkit.bench.sequential import run_sequential_suite

        return run_sequential_suite(cfg, name, seeds, out, methods, progress, fresh)
    from unlearnkit.bench.loop import SuiteRunner

    family = cfg.get("family", "vision")
    method_specs = select_methods(
        {k: dict(v or {}) for k, v in cfg.pop("methods").items()}, methods, name, family
    )
    suite_name = cfg.pop("suite", name)
    keys = tuple(cfg.pop("keys", SUITE_KEYS))
    caption = cfg.pop("caption", None)
    attack = cfg.pop("attack", None)
    cfg.pop("kind", None)
    cfg.setdefault("engine", {})["progress"] = False
    rows: list[dict[str, Any]] = []
    out = Path(out)
    with SuiteRunner(out, suite_name, family, seeds * len(method_specs), fresh, progress) as runner:
        for seed in range(seeds):
            rows += _plain_seed(runner, cfg, seed, method_specs, family, attack)
    result = {
        "suite": suite_name,
        "seeds": seeds,
        "config": cfg,
        "methods": method_specs,
        "rows": rows,
        "keys": keys,
        "caption": caption,
    }
    write_json(out / "results.json", result)
    write_text(out / "results.md", markdown_table(result, keys))
    from unlearnkit.bench.plots import tradeoff_plot

    tradeoff_plot(result, out / "tradeoff.png")
    return result


def _plain_seed(
    runner: Any,
    cfg: dict[str, Any],
    seed: int,
    specs: dict[str, dict],
    family: str,
    attack: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """One seed of a plain suite: each method's row (the oracle first, as the suite lists it), reused from
    the store where finished; the setup and the original model are built only if some row must run."""
    from unlearnkit.bench.loop import Outcome, seed_inputs
    from unlearnkit.io import weights_sha256

    scfg, setup, original = seed_inputs(runner, cfg, seed)
    oracle: dict[str, Any] | None = None
    oracle_key: str | None = None
    rows = []
    for mname, spec in specs.items():
        identity = {
            "suite": runner.suite,
            "kind": "plain",
            "config": scfg,
            "method": spec,
            "attack": None if mname == "retrain" else attack,
            "oracle": None if mname == "retrain" else oracle_key,
        }

        def compute(mname=mname, spec=spec, oracle=oracle) -> Outcome:
            orig, before = original()
            metrics, model, history = run_row(setup(), orig, mname, spec, family, oracle, attack)
            receipt = {
                "forget_ids_sha256": setup().split.forget_ids_sha256(),
                "forget_count": len(setup().split.forget),
                "weights_before_sha256": None if mname == "retrain" else before,
                "weights_after_sha256": weights_sha256(model),
            }
            return Outcome(metrics, receipt=receipt, history=history)

        res = runner.row(identity, mname, seed, compute)
        if mname == "retrain":
            oracle, oracle_key = res.metrics, res.key
        rows.append({"method": mname, "seed": seed, "metrics": public(res.metrics)})
    return rows


def select_methods(
    specs: dict[str, dict], methods: list[str] | None, name: str, family: str
) -> dict[str, dict]:
    """The suite's methods restricted to ``--methods`` (the oracle ``retrain`` always stays), each config
    validated before any training starts (``original`` is the un-unlearned reference row, no method)."""
    from unlearnkit.experiment import build_method

    if methods:
        unknown = [m for m in methods if m not in specs]
        if unknown:
            raise ConfigError(f"suite {name!r} has no method {unknown[0]!r}; it has {', '.join(specs)}")
        specs = {k: v for k, v in specs.items() if k in methods or k == "retrain"}
    for mname, spec in specs.items():
        if mname != "original":
            build_method(spec, family)
    return specs


def public(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics without the private ``_``-prefixed entries (per-item values kept for the oracle)."""
    return {k: v for k, v in metrics.items() if not k.startswith("_")}


def run_row(
    setup: Any,
    original: Any,
    mname: str,
    spec: dict[str, Any],
    family: str,
    oracle: dict[str, Any] | None,
    attack: dict[str, Any] | None,
) -> tuple[dict[str, Any], Any, list[dict[str, Any]] | None]:
    """Unlearn (or retrain, cached) from ``original``, evaluate against the oracle, optionally relearn.

    Returns (metrics, the model, its training log or None: the cached oracle and ``original`` have none).
    """
    from unlearnkit.experiment import build_method, evaluate_model, oracle_model, run_method

    history = None
    if mname == "retrain":
        model, seconds = oracle_model(setup, build_method(spec, family), original.model)
    elif mname == "original":  # the model before unlearning, as a reference row
        model, seconds = original.model, 0.0
    else:
        model, seconds, fit = run_method(setup, original.model, build_method(spec, family))
        history = fit.history
    # The oracle is compared with itself (gap 0, forget quality 1), as the papers' tables report it.
    ref = "self" if mname == "retrain" else oracle
    metrics = evaluate_model(setup, model, ref, original) | {"RTE": seconds}
    if attack and attack.get("relearn") is not None and mname != "retrain":
        metrics |= setup.protocol.relearn(setup, model, oracle, dict(attack["relearn"] or {}))
    return metrics, model, history


def summarize(rows: list[dict[str, Any]], keys=SUITE_KEYS) -> dict[str, dict[str, tuple[float, float]]]:
    by: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        d = by.setdefault(r["method"], {})
        for k in keys:
            v = r["metrics"].get(k)
            if v is not None and v == v:  # skip missing and NaN values
                d.setdefault(k, []).append(float(v))
    return {
        m: {k: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for k, v in d.items()}
        for m, d in by.items()
    }


VISION_CAPTION = (
    "UA, RA, TA, MIA in %, RTE in seconds, gap = Avg. Gap to retrain over UA/RA/TA/MIA (lower is better)."
)


def markdown_table(result: dict[str, Any], keys=None) -> str:
    keys = tuple(keys or result.get("keys") or SUITE_KEYS)
    summary = summarize(result["rows"], keys)
    head = f"# {result['suite']} ({result['seeds']} seed{'s' if result['seeds'] != 1 else ''})\n\n"
    head += (result.get("caption") or VISION_CAPTION) + "\n\n"
    lines = ["| method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for m, d in summary.items():
        cells = [f"{d[k][0]:.2f} ± {d[k][1]:.2f}" if k in d else "" for k in keys]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def print_table(result: dict[str, Any], keys=None) -> None:
    from rich.console import Console
    from rich.table import Table

    keys = tuple(keys or result.get("keys") or SUITE_KEYS)
    summary = summarize(result["rows"], keys)
    t = Table(title=f"{result['suite']} — mean ± std over {result['seeds']} seed(s)")
    t.add_column("method", no_wrap=True)
    for k in keys:
        t.add_column(k, justify="right", no_wrap=True)
    best = min((d["gap"][0] for m, d in summary.items() if m != "retrain" and "gap" in d), default=None)
    for m, d in summary.items():
        cells = []
        for k in keys:
            if k not in d:
                cells.append("")
                continue
            txt = f"{d[k][0]:.2f}±{d[k][1]:.2f}"
            if k == "gap" and m != "retrain" and best is not None and d[k][0] == best:
                txt = f"[bold green]{txt}[/]"
            cells.append(txt)
        t.add_row(m, *cells)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(t)
