"""What every suite kind shares below the kinds themselves: the method selection, the results schema
(``results.json``), summaries over seeds, number formatting and the Markdown table.

``DIR/results.json`` of every kind = ``{"suite", "kind", "protocol", "seeds", "config", "methods", "keys",
"caption", "rows": [{"method", "seed", "metrics", ...}], ...}`` plus the kind's own fields; ``protocol`` is
the name of the evaluation protocol (``unlearnkit.protocols``) the rows were measured by, so readers ask
it (headline columns, axes, caption) instead of guessing from the metric keys."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from unlearnkit.errors import ConfigError
from unlearnkit.experiment import build_method
from unlearnkit.experiment.suites import load_suite, suite_preset
from unlearnkit.io import write_json, write_text
from unlearnkit.protocols.base import public
from unlearnkit.registry import get_protocol

__all__ = [
    "cell",
    "fmt",
    "load_suite",
    "markdown_table",
    "public",
    "select_methods",
    "suite_preset",
    "suite_result",
    "summarize",
    "write_results",
]

Summary = dict[str, dict[str, tuple[float, float, int]]]


def select_methods(
    specs: dict[str, dict], methods: list[str] | None, name: str, family: str
) -> dict[str, dict]:
    """The suite's methods restricted to ``--methods`` (the oracle ``retrain`` always stays), each config
    validated before any training starts (``original`` is the un-unlearned reference row, no method)."""
    if methods:
        unknown = [m for m in methods if m not in specs]
        if unknown:
            raise ConfigError(f"suite {name!r} has no method {unknown[0]!r}; it has {', '.join(specs)}")
        specs = {k: v for k, v in specs.items() if k in methods or k == "retrain"}
    for mname, spec in specs.items():
        if mname != "original":
            build_method(spec, family)
    return specs


def oracle_first(specs: dict[str, dict]) -> dict[str, dict]:
    """``specs`` with the oracle ``retrain`` first: the other rows are compared with it."""
    return dict(sorted(specs.items(), key=lambda kv: kv[0] != "retrain"))


def suite_result(
    suite: str,
    kind: str,
    protocol: str | None,
    seeds: int,
    config: dict[str, Any],
    methods: dict[str, dict],
    keys: list[str] | tuple[str, ...],
    caption: str | None,
    rows: list[dict[str, Any]],
    **extra: Any,
) -> dict[str, Any]:
    """The ``results.json`` object of a suite of any kind (``extra``: the kind's own fields)."""
    head = {"suite": suite, "kind": kind, "protocol": protocol, "seeds": seeds, "config": config}
    return head | extra | {"methods": methods, "keys": list(keys), "caption": caption, "rows": rows}


def write_results(out: str | Path, result: dict[str, Any], markdown: str) -> None:
    """``out/results.json`` and ``out/results.md`` (each written atomically)."""
    write_json(Path(out) / "results.json", result)
    write_text(Path(out) / "results.md", markdown)


def summarize(rows: list[dict[str, Any]], keys: tuple[str, ...] | list[str]) -> dict[str, dict[str, tuple]]:
    """method -> key -> (mean, std over seeds); std is 0.0 for one value. Missing and NaN values skipped."""
    return {m: {k: v[:2] for k, v in d.items()} for m, d in summarize_n(rows, keys).items()}


def summarize_n(rows: list[dict[str, Any]], keys: tuple[str, ...] | list[str]) -> Summary:
    """:func:`summarize` with the number of values behind each cell: method -> key -> (mean, std, n)."""
    by: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        d = by.setdefault(r["method"], {})
        for k in keys:
            v = r["metrics"].get(k)
            if v is not None and v == v:  # skip missing and NaN values
                d.setdefault(k, []).append(float(v))
    return {
        m: {
            k: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v)) for k, v in d.items()
        }
        for m, d in by.items()
    }


def fmt(v: float) -> str:
    """Two decimals, or two significant digits in scientific notation for tiny non-zero values."""
    if v != 0 and abs(v) < 0.01:
        return f"{v:.2g}"
    return f"{v:.2f}"


def cell(mean: float, std: float, n: int) -> str:
    """``mean ± std`` over ``n`` >= 2 values; a single value alone (its spread was not measured)."""
    return f"{fmt(mean)} ± {fmt(std)}" if n > 1 else fmt(mean)


def caption_of(result: dict[str, Any]) -> str:
    """The suite's caption, else its protocol's."""
    if result.get("caption"):
        return str(result["caption"])
    name = result.get("protocol")
    return get_protocol(name).caption if name else ""


def seeds_text(seeds: int) -> str:
    return f"{seeds} seed{'s' if seeds != 1 else ''}"


def markdown_table(result: dict[str, Any], keys: tuple[str, ...] | list[str] | None = None) -> str:
    """Markdown: one line per method (per method and request for a sequential suite), each metric as mean
    ± std over seeds (the value alone with one seed)."""
    keys = tuple(keys or result.get("keys") or ())
    title = result["suite"] + (f": {result['mode']}" if result.get("mode") else "")
    head = f"# {title} ({seeds_text(result['seeds'])})\n\n{caption_of(result)}\n\n"
    labels = ["method", "request", "forget"] if result.get("kind") == "sequential" else ["method"]
    lines = ["| " + " | ".join([*labels, *keys]) + " |", "|---" * (len(keys) + len(labels)) + "|"]
    for label, d in row_groups(result, keys):
        cells = [cell(*d[k]) if k in d else "" for k in keys]
        lines.append("| " + " | ".join([*label, *cells]) + " |")
    return head + "\n".join(lines) + "\n"


def row_groups(result: dict[str, Any], keys: tuple[str, ...] | list[str]) -> list[tuple[list[str], dict]]:
    """(label cells, key -> (mean, std, n)) per table line: per method, or per (method, request) for a
    sequential suite (its rows carry ``request``)."""
    rows = result["rows"]
    if result.get("kind") != "sequential":
        return [([m], d) for m, d in summarize_n(rows, keys).items()]
    out = []
    for m in dict.fromkeys(r["method"] for r in rows):
        for k, req in enumerate(result.get("requests") or [], start=1):
            sel = [r for r in rows if r["method"] == m and r.get("request") == k]
            if sel:
                out.append(([m, str(k), str(req)], summarize_n(sel, keys).get(m, {})))
    return out
