"""The row loop every suite kind shares: progress, the run store (skip finished rows, resume after a kill)
and training curves.

A suite describes each unit of work (a row) by its *identity*: a JSON-able dict of everything that decides
its result (the suite, the resolved pipeline config with its seed, the method spec, the forget set, the
oracle row it is compared with). :meth:`SuiteRunner.row` hashes the identity; when the store already holds a
finished row with that hash (and ``fresh`` is off), the stored result is returned and nothing runs;
otherwise the row runs, and is written to the store the moment it finishes (marked ``running`` while it
runs, ``failed`` / ``interrupted`` if it stops), so a killed suite loses at most the row in progress and the
same command resumes it.

Training curves go to ``DIR/curves/<method>-seed<k>[-<tag>].json`` (see :func:`write_curve`).
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from unlearnkit.bench.progress import RowProgress
from unlearnkit.experiment import resolve
from unlearnkit.io import write_json
from unlearnkit.runs.store import RunStore, config_hash, open_store, split_metrics, store_path
from unlearnkit.version import __version__

MAX_CURVE_POINTS = 500
T = TypeVar("T")


@dataclass
class Outcome:
    """What computing a row yields: its metrics (private ``_`` entries included), the other fields of its
    ``results.json`` row, an optional receipt, and the training log (``FitResult.history``) if any."""

    metrics: dict[str, Any]
    fields: dict[str, Any] = field(default_factory=dict)
    receipt: dict[str, Any] | None = None
    history: list[dict[str, Any]] | None = None


@dataclass
class RowResult:
    """A finished row, computed now or read from the store."""

    id: int
    key: str
    metrics: dict[str, Any]
    fields: dict[str, Any]
    cached: bool
    receipt: dict[str, Any] | None = None

    @property
    def public(self) -> dict[str, Any]:
        return split_metrics(self.metrics)[0]


class Lazy(Generic[T]):
    """A value computed on first use (a seed's setup and original model are only built when some row of
    that seed must run)."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._done = False
        self._value: T | None = None

    def __call__(self) -> T:
        if not self._done:
            self._value = self._make()
            self._done = True
        return self._value  # type: ignore[return-value]

    @property
    def ready(self) -> bool:
        return self._done


def thin(history: list[dict[str, Any]], limit: int = MAX_CURVE_POINTS) -> list[dict[str, Any]]:
    """At most ``limit`` records of a training log, evenly spaced, the first and last kept."""
    n = len(history)
    if n <= limit:
        return list(history)
    if limit < 2:
        return list(history[-limit:]) if limit else []
    picks = sorted({round(i * (n - 1) / (limit - 1)) for i in range(limit)})
    return [history[i] for i in picks]


def curve_path(out: str | Path, method: str, seed: int, tag: str | None = None) -> Path:
    """``out/curves/<method>-seed<seed>.json``, or ``...-seed<seed>-<tag>.json`` for a tagged row."""
    name = f"{method}-seed{seed}" + (f"-{tag}" if tag else "")
    return Path(out) / "curves" / f"{name}.json"


def write_curve(
    out: str | Path,
    suite: str,
    method: str,
    seed: int,
    history: list[dict[str, Any]],
    tag: str | None = None,
) -> Path:
    """Write a row's training curve: ``{"suite", "method", "seed", "tag", "steps", "points", "history"}``
    where ``history`` is the thinned ``FitResult.history`` (records with ``epoch``, ``step``, ``phase``,
    ``loss`` and the method's own logs), ``steps`` the logged records before thinning."""
    path = curve_path(out, method, seed, tag)
    pts = thin(history)
    payload = {"suite": suite, "method": method, "seed": seed, "tag": tag}
    write_json(path, payload | {"steps": len(history), "points": len(pts), "history": pts})
    return path


class SuiteRunner:
    """Rows of one suite command: progress (:mod:`~unlearnkit.bench.progress`), the store and the curves
    of output folder ``out``. :attr:`protocol` is the protocol named by the receipts of its rows."""

    def __init__(
        self,
        out: str | Path,
        suite: str,
        family: str | None,
        total: int,
        fresh: bool = False,
        progress: bool = True,
    ) -> None:
        self.out = Path(out)
        self.suite = suite
        self.family = family
        self.total = total
        self.fresh = fresh
        self.progress = progress
        self.computed = 0
        self.reused = 0
        self.protocol: str | None = None
        self.store: RunStore | None = None
        self._progress = RowProgress(suite, total, progress)

    def __enter__(self) -> SuiteRunner:
        self.out.mkdir(parents=True, exist_ok=True)
        self.store = open_store(store_path(self.out))
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.__exit__(*exc)
        if self.progress and self.reused and self.store is not None:
            print(
                f"{self.suite}: {self.reused} row(s) reused from {self.store.path} (--fresh recomputes), "
                f"{self.computed} computed",
                file=sys.stderr,
            )
        if self.store is not None:
            self.store.close()
            self.store = None

    def say(self, text: str) -> None:
        """Show what runs now (e.g. training the original) next to the bar."""
        self._progress.say(text)

    def lookup(self, identity: dict[str, Any]) -> RowResult | None:
        """The stored finished row for ``identity`` (None when absent or when running fresh)."""
        assert self.store is not None, "use SuiteRunner as a context manager"
        identity = _versioned(identity)
        key = config_hash(identity)
        rec = None if self.fresh else self.store.find(key)
        if rec is None:
            return None
        self._note_protocol(rec.receipt)
        return RowResult(rec.id, key, rec.all_metrics, rec.fields, cached=True, receipt=rec.receipt)

    def _note_protocol(self, receipt: dict[str, Any] | None) -> None:
        if receipt and receipt.get("protocol"):
            self.protocol = str(receipt["protocol"])

    def row(
        self,
        identity: dict[str, Any],
        method: str | None,
        seed: int,
        compute: Callable[[], Outcome],
        tag: str | None = None,
        kind: str = "suite-row",
    ) -> RowResult:
        """The row for ``identity``: from the store if finished before, else computed and stored at once."""
        assert self.store is not None, "use SuiteRunner as a context manager"
        identity = _versioned(identity)
        label = f"{method or kind} seed {seed}" + (f" ({tag})" if tag else "")
        found = self.lookup(identity)
        if found is not None:
            self.reused += 1
            self._progress.finished(label, None)
            return found
        self.say(label)
        common = {
            "kind": kind,
            "config": identity,
            "suite": self.suite,
            "family": self.family,
            "method": method,
            "seed": seed,
            "path": str(self.out.resolve()),
        }
        run_id = self.store.upsert(**common, status="running")
        t0 = time.perf_counter()
        try:
            res = compute()
        except KeyboardInterrupt:
            self.store.set_status(run_id, "interrupted")
            raise
        except Exception as exc:
            self.store.set_status(run_id, "failed", f"{type(exc).__name__}: {exc}")
            raise
        wall = time.perf_counter() - t0
        if res.history and method:
            write_curve(self.out, self.suite, method, seed, res.history, tag)
        run_id = self.store.upsert(
            **common, metrics=res.metrics, fields=res.fields, receipt=res.receipt, wall=wall, status="done"
        )
        self.computed += 1
        self._note_protocol(res.receipt)
        self._progress.finished(label, wall)
        key = config_hash(identity)
        return RowResult(run_id, key, dict(res.metrics), dict(res.fields), cached=False, receipt=res.receipt)


def _versioned(identity: dict[str, Any]) -> dict[str, Any]:
    """A row's identity plus the unlearnkit version (rows of another version are recomputed) and the
    contents of the files its split reads."""
    out = identity | {"unlearnkit_version": __version__}
    # Files a split reads are identified by their contents too: an overwritten ids/prompts file must not
    # reuse rows computed on the old one.
    split = (identity.get("config") or {}).get("split") or {}
    for key in ("ids_file", "prompts_file"):
        path = split.get(key) if isinstance(split, dict) else None
        if path and Path(path).is_file():
            out[f"{key}_sha256"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return out


def resolved(cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    """The full effective pipeline config of one seed (defaults merged), as rows hash it. Its ``method``
    section is dropped: a suite's rows take their methods from the suite's ``methods:``."""
    out = resolve(cfg | {"seed": seed})
    out.pop("method", None)
    return out
