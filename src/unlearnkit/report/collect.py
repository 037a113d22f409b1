"""Find and validate the suite results a report is made of.

A report folder holds one or more suite output folders (each written by ``unlearnkit bench SUITE --out``),
or is one itself. Each suite folder has ``results.json`` and, optionally, per-row training curves in
``curves/<method>-seed<k>[-<tag>].json``: ``{"method", "seed", "tag", "history": [...]}`` as
``bench/loop.py`` writes them, or a bare list, of ``{"epoch", "step", "phase", "loss", ...}`` points.

Other ``results.json`` files found while searching (single runs of ``unlearnkit unlearn --out``, which
have ``metrics`` but no ``rows``) are skipped with a note; a ``results.json`` that is not JSON or whose rows
are not ``{"method", "metrics": {...}}`` objects is an error that names the file. A ``composite.json``
(``unlearnkit bench quick``) sets the order of the suites.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearnkit.errors import UnlearnkitError

CURVE_NAME = re.compile(r"^(?P<method>.+?)-seed(?P<seed>\d+)(?:-(?P<tag>.+))?\.json$")
SKIP_DIRS = {"report_files", "curves", ".git", "__pycache__"}
# Older results.json files do not name their protocol: the worst-case and sequential kinds ran only one,
# otherwise the first of these metrics present tells it.
OLD_KIND_PROTOCOL = {"worstcase": "classification", "sequential": "muse"}
OLD_KEY_PROTOCOL = (
    ("forget_quality", "tofu"),
    ("verbmem_f", "muse"),
    ("ASR", "erasure"),
    ("pre_ASR", "erasure"),
    ("UA", "classification"),
)


@dataclass
class Curve:
    """One training run's loss trace: ``points`` are ``(step, loss, phase)`` in file order."""

    method: str
    seed: int
    tag: str | None
    points: list[tuple[float, float, str]]


@dataclass
class SuiteResult:
    """A suite's ``results.json`` (``data``) with where it came from and its training curves."""

    folder: Path
    label: str
    data: dict[str, Any]
    curves: list[Curve] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.data.get("suite") or self.folder.name)

    @property
    def kind(self) -> str:
        return str(self.data.get("kind") or "plain")

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.data["rows"]

    @property
    def seeds(self) -> int:
        seeds = self.data.get("seeds")
        if isinstance(seeds, int) and seeds > 0:
            return seeds
        return len({r.get("seed") for r in self.rows}) or 1

    @property
    def methods(self) -> list[str]:
        """Methods in the order their first row appears."""
        return list(dict.fromkeys(r["method"] for r in self.rows))

    @property
    def keys(self) -> list[str]:
        """The suite's metric columns: its ``keys``, else every metric in first-seen order."""
        keys = self.data.get("keys")
        if isinstance(keys, list | tuple) and keys:
            return [str(k) for k in keys]
        return list(dict.fromkeys(k for r in self.rows for k in r["metrics"]))

    def has(self, *keys: str) -> bool:
        """Whether some row has a finite value for every one of ``keys``."""
        return any(all(finite(r["metrics"].get(k)) for k in keys) for r in self.rows)

    @property
    def protocol(self) -> str | None:
        """The evaluation protocol the rows were measured by (``unlearnkit.protocols``), as
        ``results.json`` names it; for an older file without the name, told by its metric keys."""
        name = self.data.get("protocol")
        if isinstance(name, str) and name:
            return name
        return self._guess_protocol()

    def _guess_protocol(self) -> str | None:
        """Results written before ``protocol`` was recorded: the kind or the metric keys tell it."""
        if self.kind in OLD_KIND_PROTOCOL:
            return OLD_KIND_PROTOCOL[self.kind]
        for key, name in OLD_KEY_PROTOCOL:
            if self.has(key):
                return name
        return None


def finite(v: Any) -> bool:
    """True for a real number that is neither NaN nor infinite (bools excluded)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def find_results(root: Path) -> list[Path]:
    """Every ``results.json`` at ``root`` or below it, in sorted path order (report outputs skipped)."""
    if (root / "results.json").is_file():
        return [root / "results.json"]
    found: list[Path] = []
    for path in sorted(root.rglob("results.json")):
        if not any(part in SKIP_DIRS for part in path.relative_to(root).parts[:-1]):
            found.append(path)
    return found


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UnlearnkitError(
            f"{str(path)!r} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}): "
            "re-run the suite that wrote it (unlearnkit bench SUITE --out DIR)"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UnlearnkitError(f"cannot read {str(path)!r}: {exc}") from exc


def validate(data: Any, path: Path) -> None:
    """Raise a one-line :class:`UnlearnkitError` unless ``data`` has the suite results layout."""
    where = f"{str(path)!r}"
    if not isinstance(data, dict):
        raise UnlearnkitError(f"{where} is not a suite result: expected a JSON object with 'rows'")
    rows = data.get("rows")
    if not isinstance(rows, list) or not rows:
        raise UnlearnkitError(
            f"{where} has no 'rows' (a non-empty list of {{'method', 'seed', 'metrics'}}): it is not the "
            "results.json of 'unlearnkit bench SUITE --out DIR'"
        )
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("method"), str):
            raise UnlearnkitError(f"{where}: row {i} is not an object with a 'method' name")
        if not isinstance(row.get("metrics"), dict):
            raise UnlearnkitError(f"{where}: row {i} ({row['method']}) has no 'metrics' object")
    if data.get("kind") == "sequential":
        bad = [i for i, r in enumerate(rows) if not isinstance(r.get("request"), int)]
        if bad:
            raise UnlearnkitError(f"{where}: sequential row {bad[0]} has no integer 'request'")


def load_curves(folder: Path, notes: list[str]) -> list[Curve]:
    """The training curves under ``folder/curves`` (none if absent); unreadable files become notes."""
    cdir = folder / "curves"
    if not cdir.is_dir():
        return []
    curves: list[Curve] = []
    for path in sorted(cdir.glob("*.json")):
        m = CURVE_NAME.match(path.name)
        if not m:
            continue
        try:
            points = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            notes.append(f"skipped the training curve {path.name} of {folder.name}: {exc}")
            continue
        method, seed, tag = m["method"], int(m["seed"]), m["tag"]
        if isinstance(points, dict):  # bench/loop.py's {"method", "seed", "tag", "history": [...]}
            method = str(points.get("method") or method)
            seed = points["seed"] if isinstance(points.get("seed"), int) else seed
            tag = str(points["tag"]) if points.get("tag") else tag
            points = next(
                (v for v in (points.get("history"), points.get("points")) if isinstance(v, list)), []
            )
        trace = (
            [
                (float(p["step"]), float(p["loss"]), str(p.get("phase") or ""))
                for p in points
                if isinstance(p, dict) and finite(p.get("step")) and finite(p.get("loss"))
            ]
            if isinstance(points, list)
            else []
        )
        if trace:
            curves.append(Curve(method, seed, tag, trace))
    return curves


def _part_order(root: Path) -> dict[str, int]:
    """Folder -> position of the parts listed in ``root/composite.json`` (``bench/composite.py``), if any."""
    path = root / "composite.json"
    try:
        parts = json.loads(path.read_text()).get("parts") if path.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return {}
    if not isinstance(parts, dict):
        return {}
    folders = [str(v.get("folder") or k) if isinstance(v, dict) else str(k) for k, v in parts.items()]
    return {f: i for i, f in enumerate(folders)}


def collect(root: str | Path, notes: list[str] | None = None) -> list[SuiteResult]:
    """Load every suite result under ``root``; errors name the file and say how to fix it."""
    root = Path(root)
    notes = notes if notes is not None else []
    if not root.exists():
        raise UnlearnkitError(f"report folder {str(root)!r} does not exist")
    if root.is_file():
        if root.name != "results.json":
            raise UnlearnkitError(f"{str(root)!r} is not a folder: pass the folder that holds results.json")
        root = root.parent
    paths = find_results(root)
    suites: list[SuiteResult] = []
    for path in paths:
        data = _read_json(path)
        if len(paths) > 1 and isinstance(data, dict) and "rows" not in data:  # e.g. a single run's folder
            notes.append(f"skipped {path.parent.relative_to(root)}: its results.json has no suite rows")
            continue
        validate(data, path)
        folder = path.parent
        label = str(folder.relative_to(root)) if folder != root else (data.get("suite") or root.name)
        suites.append(SuiteResult(folder, str(label), data, load_curves(folder, notes)))
    order = _part_order(root)
    if order:  # a composite run (bench quick): its parts' order, then anything else found
        suites.sort(
            key=lambda s: (
                order.get(s.folder.relative_to(root).parts[0], len(order)) if s.folder != root else -1
            )
        )
    if not suites:
        raise UnlearnkitError(
            f"no suite results.json under {str(root)!r}: run 'unlearnkit bench SUITE --out "
            f"{root}/SUITE' first, then 'unlearnkit report {root}'"
        )
    return suites
