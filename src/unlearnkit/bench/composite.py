"""Composite suites (``kind: composite``): several suites run one after the other into sub-folders.

``unlearnkit bench quick`` is one: a short pass over every family (classifier, TOFU-style LM,
text-to-image) and a worst-case selection, followed by the report. A composite preset lists its
``parts``; each part names a suite and may fix its ``seeds``, restrict its ``methods`` and add
``overrides``, and a ``note`` that a plain part's table caption ends with (what its budget can and cannot
show)::

    parts:
      classifiers: {suite: vision-digits, seeds: 2}
      llm: {suite: tofu-synthetic, methods: [retrain, npo, simnpo], overrides: [attack.relearn.steps=5]}

On the command line, ``--seeds`` overrides every part's seeds, ``--methods`` keeps the listed methods in
each part that has them (a name no part has is an error), and ``key=value`` overrides go to every part,
or to one part when prefixed with its name and a colon (``llm:method.lr=1e-5``). Each part writes
``DIR/PART/results.json``, ``DIR/composite.json`` lists the parts, and every row is indexed in one store,
``DIR/runs.sqlite`` (``unlearnkit runs list --store DIR``);
parts whose rows are already stored are skipped by the suite runner, so an interrupted composite run
resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from unlearnkit.bench.kinds import SuiteRequest, register_kind
from unlearnkit.bench.results import load_suite
from unlearnkit.errors import ConfigError
from unlearnkit.io import write_json
from unlearnkit.runs.store import ENV, STORE_NAME

PART_KEYS = {"suite", "seeds", "methods", "overrides", "note"}


def check_parts(cfg: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    """The validated ``parts`` of a composite suite config."""
    parts = cfg.get("parts")
    if not isinstance(parts, dict) or not parts:
        raise ConfigError(f"composite suite {name!r} must list its suites under 'parts:'")
    out: dict[str, dict[str, Any]] = {}
    for pname, spec in parts.items():
        spec = {"suite": spec} if isinstance(spec, str) else dict(spec or {})
        unknown = set(spec) - PART_KEYS
        if unknown:
            raise ConfigError(
                f"part {pname!r} of {name!r}: unknown key(s) {sorted(unknown)}; use {sorted(PART_KEYS)}"
            )
        if not spec.get("suite"):
            raise ConfigError(f"part {pname!r} of {name!r} needs 'suite: NAME'")
        if spec.get("seeds") is not None and (not isinstance(spec["seeds"], int) or spec["seeds"] < 1):
            raise ConfigError(f"part {pname!r} of {name!r}: seeds must be a positive integer")
        out[pname] = spec
    return out


def split_overrides(overrides: list[str], parts: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(overrides for every part, overrides per part) from ``key=value`` / ``PART:key=value`` items."""
    common: list[str] = []
    per: dict[str, list[str]] = {p: [] for p in parts}
    for item in overrides:
        head, sep, rest = item.partition(":")
        if sep and "=" not in head:
            if head not in per:
                raise ConfigError(f"override {item!r} names no part; parts are {', '.join(parts)}")
            per[head].append(rest)
        else:
            common.append(item)
    return common, per


@register_kind("composite", parts=True)
def run_composite_suite(req: SuiteRequest) -> dict[str, Any]:
    """Run every part into ``out/PART`` (through ``req.run_suite``, with ``req.runner``), list them in
    ``out/composite.json``, then write the report with ``req.report`` (the report layer sits above this
    one: ``unlearnkit bench`` hands in ``unlearnkit.report.build_report``; without it, no report)."""
    cfg, name, methods = req.cfg, req.name, req.methods
    parts = check_parts(cfg, name)
    common, per = split_overrides(list(req.overrides or []), list(parts))
    plan: dict[str, dict[str, Any]] = {}
    for pname, spec in parts.items():
        part_methods = list(spec.get("methods") or [])
        if methods:
            available = part_methods or list(load_suite(spec["suite"]).get("methods") or {})
            part_methods = [m for m in available if m in methods]
        plan[pname] = spec | {"methods": part_methods or None}
    if methods:
        used = {m for p in plan.values() for m in (p["methods"] or [])}
        missing = [m for m in methods if m not in used]
        if missing:
            raise ConfigError(f"no part of {name!r} has method {missing[0]!r}")
    out = Path(req.out)
    summary: dict[str, Any] = {"suite": cfg.get("suite", name), "kind": "composite", "parts": {}}
    with _one_store(out):
        _run_parts(req, plan, summary, common, per)
    if cfg.get("report", True) and req.report is not None:
        summary["report"] = {k: str(v) for k, v in req.report(out).items()}
        write_json(out / "composite.json", summary)
    return summary


@contextlib.contextmanager
def _one_store(out: Path) -> Iterator[None]:
    """Every part indexes its rows in ``out/runs.sqlite`` (one store for the whole composite run), unless
    the user points ``UNLEARNKIT_STORE`` elsewhere."""
    if os.environ.get(ENV):
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    os.environ[ENV] = str(out / STORE_NAME)
    try:
        yield
    finally:
        os.environ.pop(ENV, None)


def _run_parts(
    req: SuiteRequest,
    plan: dict[str, dict[str, Any]],
    summary: dict[str, Any],
    common: list[str],
    per: dict[str, list[str]],
) -> None:
    if req.run_suite is None:
        raise ValueError("a composite suite runs its parts through SuiteRequest.run_suite; none was given")
    out = Path(req.out)
    for pname, spec in plan.items():
        if req.methods and not spec["methods"]:
            continue
        t0 = time.perf_counter()
        n = req.seeds if req.seeds is not None else int(spec.get("seeds") or 1)
        part_overrides = list(spec.get("overrides") or []) + common + per[pname]
        if spec.get("note"):  # a JSON string is a YAML scalar: any text survives the override parser
            part_overrides.append(f"note={json.dumps(str(spec['note']))}")
        req.run_suite(
            spec["suite"], n, out / pname, spec["methods"], part_overrides,
            progress=req.progress, fresh=req.fresh, runner=req.runner,
        )  # fmt: skip
        summary["parts"][pname] = {
            "suite": spec["suite"],
            "seeds": n,
            "methods": spec["methods"],
            "overrides": part_overrides,
            "folder": pname,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        write_json(out / "composite.json", summary)
