"""``unlearnkit runs list|show|compare``: read the run store (``runs/store.py``).

    unlearnkit runs list [--store PATH|DIR] [--suite S] [--method M] [--kind K] [--status S] [--json]
    unlearnkit runs show ID [--store PATH|DIR] [--json]
    unlearnkit runs compare ID ID [ID ...] [--store PATH|DIR] [--json]

The store is ``--store`` (a ``.sqlite`` file or a folder holding ``runs.sqlite``), else ``UNLEARNKIT_STORE``,
else ``./runs.sqlite``.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import yaml

from unlearnkit.errors import UnlearnkitError
from unlearnkit.runs.store import RunRecord, RunStore, locate_store, open_store

LIST_METRICS = 4  # metrics shown per row by `runs list`


def add_parser(sub: Any) -> None:
    """Add the ``runs`` command and its ``list``, ``show`` and ``compare`` subcommands to ``sub``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", help="run store: a .sqlite file or a folder holding runs.sqlite")
    common.add_argument("--json", action="store_true", help="print JSON")
    r = sub.add_parser("runs", help="list, show and compare runs in a run store")
    rs = r.add_subparsers(dest="runs_command", required=True)
    ls = rs.add_parser("list", parents=[common], help="a table of the stored runs")
    ls.add_argument("--suite", help="only rows of this suite")
    ls.add_argument("--method", help="only runs of this method")
    ls.add_argument("--kind", choices=["suite-row", "selection", "unlearn"], help="only runs of this kind")
    ls.add_argument("--status", choices=["running", "done", "failed", "interrupted"], help="only this status")
    sh = rs.add_parser("show", parents=[common], help="one run: config, metrics and receipt")
    sh.add_argument("id", type=int, help="run id (see `runs list`)")
    cp = rs.add_parser("compare", parents=[common], help="metrics of runs side by side, with differences")
    cp.add_argument("ids", type=int, nargs="+", help="two or more run ids")


def _open(where: str | None) -> RunStore:
    path = locate_store(where)
    try:
        return open_store(path, readonly=True)
    except UnlearnkitError:  # e.g. a WAL file the reader may not open read-only: open normally
        return open_store(path)


def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}g}"
    if isinstance(v, list | dict):
        return json.dumps(v)
    return str(v)


def _console():
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=200)


def _get(store: RunStore, run_id: int) -> RunRecord:
    rec = store.get(run_id)
    if rec is None:
        raise UnlearnkitError(f"no run with id {run_id} in {str(store.path)!r} (see `unlearnkit runs list`)")
    return rec


def _summary(rec: RunRecord) -> dict[str, Any]:
    """The JSON of one run for ``list --json``: every column but the private metrics."""
    d = rec.as_dict()
    d.pop("private", None)
    return d


def cmd_list(args: argparse.Namespace) -> int:
    with _open(args.store) as store:
        recs = store.query(suite=args.suite, method=args.method, kind=args.kind, status=args.status)
    if args.json:
        print(json.dumps([_summary(r) for r in recs], indent=2))
        return 0
    if not recs:
        print("no runs match")
        return 0
    from rich.table import Table

    t = Table(title=f"runs in {store.path.resolve()}")
    for col in ("id", "created", "kind", "suite", "method", "seed", "status", "RTE", "metrics", "config"):
        right = col in ("id", "seed", "RTE")
        t.add_column(col, no_wrap=col != "metrics", justify="right" if right else "left")
    for r in recs:
        shown = [(k, v) for k, v in r.metrics.items() if k != "RTE"][:LIST_METRICS]
        metrics = " ".join(f"{k}={_fmt(v, 3)}" for k, v in shown)
        if r.kind == "suite-row" and r.fields.get("set"):
            metrics = f"[{r.fields['set']}] {metrics}"
        if r.fields.get("request"):
            metrics = f"[request {r.fields['request']}] {metrics}"
        t.add_row(
            str(r.id),
            r.created.replace("+00:00", "Z"),
            r.kind,
            r.suite or "",
            r.method or "",
            "" if r.seed is None else str(r.seed),
            r.status,
            _fmt(r.rte, 3),
            metrics,
            r.config_hash[:12],
        )
    _console().print(t)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _open(args.store) as store:
        rec = _get(store, args.id)
    if args.json:
        print(json.dumps(rec.as_dict(), indent=2))
        return 0
    lines = [
        f"run {rec.id}: {rec.kind} · {rec.method or '-'} · seed {rec.seed} · {rec.status}",
        f"suite: {rec.suite or '-'}    family: {rec.family or '-'}",
        f"created: {rec.created}    updated: {rec.updated}",
        f"config hash: {rec.config_hash}",
        f"folder: {rec.path or '-'}",
        f"RTE: {_fmt(rec.rte)} s    wall: {_fmt(rec.wall)} s",
    ]
    if rec.error:
        lines.append(f"error: {rec.error}")
    lines += ["", "metrics:"]
    lines += [f"  {k}: {_fmt(v)}" for k, v in rec.metrics.items()] or ["  (none)"]
    if rec.private:
        lines.append(f"  (+ {len(rec.private)} private per-item entries: {', '.join(rec.private)})")
    fields = {k: v for k, v in rec.fields.items() if k != "payload"}
    if fields:
        lines += ["", "fields:", _indent(yaml.safe_dump(fields, sort_keys=False))]
    if rec.receipt:
        lines += ["", "receipt:", _indent(yaml.safe_dump(rec.receipt, sort_keys=False))]
    lines += ["", "config:", _indent(yaml.safe_dump(rec.config, sort_keys=True))]
    print("\n".join(lines).rstrip())
    return 0


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.rstrip().splitlines())


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"a.b.c": value}`` (lists kept whole)."""
    if not isinstance(obj, dict):
        return {prefix or "value": obj}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out |= flatten(v, key)
        else:
            out[key] = v
    return out


def compare(recs: list[RunRecord]) -> dict[str, Any]:
    """Metrics side by side (``metrics[k]`` = one value per run), each run's difference to the first
    (``diff[k]``, None where not numeric), and the config entries that differ (``config_diff``)."""
    keys = list(dict.fromkeys(k for r in recs for k in r.metrics))
    metrics = {k: [r.metrics.get(k) for r in recs] for k in keys}
    diff: dict[str, list[float | None]] = {}
    for k, vals in metrics.items():
        first = vals[0]
        row: list[float | None] = []
        for v in vals[1:]:
            ok = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (first, v))
            row.append(float(v) - float(first) if ok else None)
        diff[k] = row
    flat = [flatten(r.config) for r in recs]
    ckeys = list(dict.fromkeys(k for f in flat for k in f))
    config_diff = {
        k: [f.get(k) for f in flat]
        for k in ckeys
        if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1
    }
    runs = [{"id": r.id, "kind": r.kind, "suite": r.suite, "method": r.method, "seed": r.seed} for r in recs]
    return {"runs": runs, "metrics": metrics, "diff": diff, "config_diff": config_diff}


def cmd_compare(args: argparse.Namespace) -> int:
    if len(args.ids) < 2:
        raise UnlearnkitError("runs compare needs two or more run ids")
    with _open(args.store) as store:
        recs = [_get(store, i) for i in args.ids]
    res = compare(recs)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    from rich.table import Table

    first = recs[0]
    t = Table(title="metrics (Δ = run − run " + str(first.id) + ")")
    t.add_column("metric", no_wrap=True)
    for i, r in enumerate(recs):
        t.add_column(f"#{r.id} {r.method or r.kind} s{r.seed}", justify="right", no_wrap=True)
        if i:
            t.add_column(f"Δ #{r.id}", justify="right", no_wrap=True)
    for k, vals in res["metrics"].items():
        cells = [_fmt(vals[0])]
        for v, d in zip(vals[1:], res["diff"][k], strict=True):
            cells += [_fmt(v), "" if d is None else f"{d:+.4g}"]
        t.add_row(k, *cells)
    console = _console()
    console.print(t)
    if res["config_diff"]:
        c = Table(title="config entries that differ")
        c.add_column("key", no_wrap=True)
        for r in recs:
            c.add_column(f"#{r.id}")
        for k, vals in res["config_diff"].items():
            c.add_row(k, *[_fmt(v) for v in vals])
        console.print(c)
    else:
        print("the configs are identical")
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatch ``unlearnkit runs ...``."""
    return {"list": cmd_list, "show": cmd_show, "compare": cmd_compare}[args.runs_command](args)
