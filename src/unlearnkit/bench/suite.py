"""Run a suite (``unlearnkit bench vision-digits``): for each seed, train (or load) the original model,
retrain the oracle, run every method from the same original, and report each metric with its gap.

``DIR/results.json`` = ``{"suite", "config", "rows": [{"method", "seed", "metrics"}]}`` and
``DIR/results.md`` holds mean ± std per method.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from unlearnkit.config import apply_overrides, load_preset
from unlearnkit.errors import ConfigError
from unlearnkit.io import write_json, write_text

SUITE_KEYS = ("UA", "RA", "TA", "MIA", "RTE", "gap")


def load_suite(name: str, overrides: list[str] | None = None) -> dict[str, Any]:
    cfg = load_preset(name if "/" in name or name.endswith(".yaml") else f"suites/{name}")
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
    seeds: int,
    out: str | Path,
    methods: list[str] | None = None,
    overrides: list[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from unlearnkit.pipeline import make_setup, original_model

    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    cfg = load_suite(name, overrides)
    if cfg.get("kind") == "worstcase":  # random vs worst-case forget sets (bench/worstcase.py)
        from unlearnkit.bench.worstcase import run_worstcase_suite

        return run_worstcase_suite(cfg, name, seeds, out, methods, progress)
    if cfg.get("kind") == "sequential":  # MUSE scalability / sustainability (bench/sequential.py)
        from unlearnkit.bench.sequential import run_sequential_suite

        return run_sequential_suite(cfg, name, seeds, out, methods, progress)
    family = cfg.get("family", "vision")
    method_specs = select_methods(
        {k: dict(v or {}) for k, v in cfg.pop("methods").items()}, methods, name, family
    )
    suite_name = cfg.pop("suite", name)
    keys = tuple(cfg.pop("keys", SUITE_KEYS))
    caption = cfg.pop("caption", None)
    attack = cfg.pop("attack", None)
    cfg.setdefault("engine", {})["progress"] = False
    rows: list[dict[str, Any]] = []
    out = Path(out)
    total = seeds * (len(method_specs) + 1)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        disable=not progress,
        transient=True,
    ) as bar:
        job = bar.add_task(suite_name, total=total)
        for seed in range(seeds):
            setup = make_setup(cfg | {"seed": seed})
            bar.update(job, description=f"{suite_name} seed {seed}: original")
            original, _ = original_model(setup)
            bar.advance(job)
            oracle: dict[str, Any] | None = None
            for mname, spec in method_specs.items():
                bar.update(job, description=f"{suite_name} seed {seed}: {mname}")
                metrics = run_row(setup, original, mname, spec, family, oracle, attack)
                if mname == "retrain":
                    oracle = metrics
                rows.append({"method": mname, "seed": seed, "metrics": public(metrics)})
                bar.advance(job)
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


def select_methods(
    specs: dict[str, dict], methods: list[str] | None, name: str, family: str
) -> dict[str, dict]:
    """The suite's methods restricted to ``--methods`` (the oracle ``retrain`` always stays), each config
    validated before any training starts (``original`` is the un-unlearned reference row, no method)."""
    from unlearnkit.pipeline import build_method

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
) -> dict[str, Any]:
    """Unlearn (or retrain, cached) from ``original``, evaluate against the oracle, optionally relearn."""
    from unlearnkit.pipeline import build_method, evaluate_model, oracle_model, run_method

    if mname == "retrain":
        model, seconds = oracle_model(setup, build_method(spec, family), original)
    elif mname == "original":  # the model before unlearning, as a reference row
        model, seconds = original, 0.0
    else:
        model, seconds, _ = run_method(setup, original, build_method(spec, family))
    # The oracle is compared with itself (gap 0, forget quality 1), as the papers' tables report it.
    metrics = evaluate_model(setup, model, "self" if mname == "retrain" else oracle) | {"RTE": seconds}
    if attack and attack.get("relearn") is not None and mname != "retrain":
        from unlearnkit.metrics.text_suite import relearn_and_evaluate

        metrics |= relearn_and_evaluate(setup, model, oracle, dict(attack["relearn"] or {}))
    return metrics


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
