"""The run store: one embedded SQLite file that indexes every run (stdlib ``sqlite3``, no server).

Where it lives:

- ``unlearnkit bench SUITE --out DIR`` uses ``DIR/runs.sqlite``;
- ``unlearnkit unlearn --out RUN`` (and ``api.unlearn(out=RUN)``) uses ``RUN/../runs.sqlite``, next to the
  run folders, so ``--out runs/a`` and ``--out runs/b`` share ``runs/runs.sqlite``;
- the environment variable ``UNLEARNKIT_STORE`` overrides both: a ``.sqlite`` file, or a folder that holds
  (or will hold) ``runs.sqlite``.

What a row holds (table ``runs``): ``id``; ``created`` / ``updated`` (UTC, ISO 8601); ``kind`` (``suite-row``
for a row of a suite, ``selection`` for a suite's worst-case selection, ``unlearn`` for a single run);
``suite``, ``family``, ``method``, ``seed``; ``config_hash`` = sha256 of the canonical JSON (sorted keys, no
spaces) of ``config``, the row's full effective configuration (resolved pipeline config with its seed, method
spec, and whatever else decides the result: the suite, the forget set, the oracle row); ``config``,
``metrics`` (public metrics), ``private`` (the ``_``-prefixed per-item entries an oracle row passes to later
rows), ``fields`` (the rest of the row as a suite writes it to ``results.json``), ``receipt`` (JSON, when
there is one) as JSON text; ``rte`` (the method's own wall seconds, the ``RTE`` metric) and ``wall`` (seconds
for the whole row, evaluation included); ``path`` (the run folder, or the suite's output folder); ``status``
(``running``, ``done``, ``failed``, ``interrupted``) and ``error``. Suite rows are unique by
``config_hash``; single runs by their folder (a rerun into the same folder replaces its row). A suite finds
finished work with :meth:`RunStore.find` and skips it.

The schema version is kept in table ``meta`` (``schema_version``); a store written by a newer schema is
refused with a clear error. The file uses write-ahead logging where the file system allows it, a busy
timeout, and one transaction per write, so two processes may open it at once.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import sqlite3
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearnkit.errors import UnlearnkitError

SCHEMA_VERSION = 1
STORE_NAME = "runs.sqlite"
ENV = "UNLEARNKIT_STORE"
KINDS = ("suite-row", "selection", "unlearn", "tune")
STATUSES = ("running", "done", "failed", "interrupted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    kind TEXT NOT NULL,
    suite TEXT,
    family TEXT,
    method TEXT,
    seed INTEGER,
    config_hash TEXT NOT NULL,
    config TEXT NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}',
    private TEXT NOT NULL DEFAULT '{}',
    fields TEXT NOT NULL DEFAULT '{}',
    receipt TEXT,
    rte REAL,
    wall REAL,
    path TEXT,
    status TEXT NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS runs_config_hash ON runs (config_hash);
CREATE INDEX IF NOT EXISTS runs_suite_method ON runs (suite, method, seed);
"""
_JSON_COLUMNS = ("config", "metrics", "private", "fields", "receipt")
_FILTERS = ("kind", "suite", "family", "method", "seed", "status", "config_hash", "path")


def _plain(o: Any) -> Any:
    """JSON fallback for values metrics may hold: tensors and numpy scalars, paths, tuples."""
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot store {type(o).__name__} as JSON")


def canonical_json(obj: Any) -> str:
    """The canonical JSON text of ``obj``: sorted keys, no spaces, non-ASCII kept."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_plain)


def _dumps(obj: Any) -> str:
    """JSON text that keeps the key order (metrics and row fields are read back in the order written)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=_plain)


def config_hash(config: Any) -> str:
    """sha256 (hex) of ``config``'s canonical JSON: equal configurations hash equally, whatever key order."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


def split_metrics(metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(public, private) metrics: the private ones are the ``_``-prefixed per-item entries."""
    public = {k: v for k, v in metrics.items() if not k.startswith("_")}
    return public, {k: v for k, v in metrics.items() if k.startswith("_")}


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _number(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


@dataclass
class RunRecord:
    """One row of the store, with its JSON columns decoded."""

    id: int
    key: str
    created: str
    updated: str
    kind: str
    suite: str | None
    family: str | None
    method: str | None
    seed: int | None
    config_hash: str
    config: Any
    metrics: dict[str, Any] = field(default_factory=dict)
    private: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)
    receipt: dict[str, Any] | None = None
    rte: float | None = None
    wall: float | None = None
    path: str | None = None
    status: str = "done"
    error: str | None = None

    @property
    def all_metrics(self) -> dict[str, Any]:
        """Public and private metrics together (what the row's evaluation returned)."""
        return self.metrics | self.private

    def as_dict(self) -> dict[str, Any]:
        """Every column as a JSON-ready dict."""
        return dict(vars(self))


def store_path(out: str | Path | None = None, single_run: bool = False) -> Path:
    """The store for a suite's output folder ``out`` (``out/runs.sqlite``), or for a single run folder
    (``single_run=True``: ``out/../runs.sqlite``); ``UNLEARNKIT_STORE`` overrides both."""
    env = os.environ.get(ENV)
    if env:
        p = Path(env).expanduser()
        return p / STORE_NAME if p.is_dir() or not p.suffix else p
    if out is None:
        raise UnlearnkitError("no run store: pass an output folder or set UNLEARNKIT_STORE")
    out = Path(out)
    return (out.resolve().parent if single_run else out) / STORE_NAME


def locate_store(where: str | Path | None = None) -> Path:
    """An existing store for the ``runs`` commands: ``where`` (a ``.sqlite`` file, or a folder holding
    ``runs.sqlite``), else ``UNLEARNKIT_STORE``, else ``./runs.sqlite``; a clear error when there is none."""
    if where is None:
        where = os.environ.get(ENV) or "."
    p = Path(where).expanduser()
    cand = p / STORE_NAME if p.is_dir() else p
    if not cand.is_file():
        raise UnlearnkitError(
            f"no run store at {str(cand)!r}: pass --store FILE.sqlite or a folder holding {STORE_NAME} "
            f"(bench --out DIR writes DIR/{STORE_NAME}; unlearn --out RUN writes RUN/../{STORE_NAME})"
        )
    return cand


class RunStore:
    """An open store; use as a context manager (or call :meth:`close`)."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        try:
            if readonly:
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise UnlearnkitError(f"cannot open the run store {str(self.path)!r}: {exc}") from exc
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout = 30000")
        if not readonly:
            # Some file systems (network mounts) have no shared memory for WAL: keep the rollback journal.
            with contextlib.suppress(sqlite3.DatabaseError):
                self._db.execute("PRAGMA journal_mode = WAL")
        self._init_schema()

    # -- lifecycle ---------------------------------------------------------------------------------------
    def _init_schema(self) -> None:
        try:
            if self.readonly:
                row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                version = int(row["value"]) if row else 0
            else:
                version = self._create_schema()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise UnlearnkitError(f"{str(self.path)!r} is not a usable run store: {exc}") from exc
        if version > SCHEMA_VERSION:
            self._db.close()
            raise UnlearnkitError(
                f"the run store {str(self.path)!r} has schema version {version}, newer than this unlearnkit "
                f"reads ({SCHEMA_VERSION}); upgrade unlearnkit"
            )
        self.schema_version = version

    def _create_schema(self) -> int:
        """Create the tables if missing (one transaction, so two processes opening at once agree);
        returns the schema version."""
        with self._transaction():
            for stmt in filter(str.strip, _SCHEMA.split(";")):
                self._db.execute(stmt)
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
                version = SCHEMA_VERSION
            else:
                version = int(row["value"])
        return version

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction (taken at once, so two writers queue on the busy timeout)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------------------------------
    def upsert(
        self,
        *,
        kind: str,
        config: Any,
        key: str | None = None,
        suite: str | None = None,
        family: str | None = None,
        method: str | None = None,
        seed: int | None = None,
        metrics: dict[str, Any] | None = None,
        fields: dict[str, Any] | None = None,
        receipt: dict[str, Any] | None = None,
        wall: float | None = None,
        path: str | Path | None = None,
        status: str = "done",
        error: str | None = None,
    ) -> int:
        """Insert a row, or replace the row with the same ``key`` (default: the config hash), keeping its id
        and creation time. ``metrics`` may hold private ``_`` entries: they go to the ``private`` column.
        Returns the row id."""
        if kind not in KINDS:
            raise UnlearnkitError(f"run kind must be one of {KINDS}, got {kind!r}")
        if status not in STATUSES:
            raise UnlearnkitError(f"run status must be one of {STATUSES}, got {status!r}")
        chash = config_hash(config)
        public, private = split_metrics(dict(metrics or {}))
        now = _now()
        values = {
            "key": key or chash,
            "created": now,
            "updated": now,
            "kind": kind,
            "suite": suite,
            "family": family,
            "method": method,
            "seed": seed,
            "config_hash": chash,
            "config": canonical_json(config),
            "metrics": _dumps(public),
            "private": _dumps(private),
            "fields": _dumps(fields or {}),
            "receipt": None if receipt is None else _dumps(receipt),
            "rte": _number(public.get("RTE")),
            "wall": _number(wall),
            "path": None if path is None else str(path),
            "status": status,
            "error": error,
        }
        cols = ", ".join(values)
        marks = ", ".join(f":{c}" for c in values)
        updates = ", ".join(f"{c} = excluded.{c}" for c in values if c not in ("key", "created"))
        with self._transaction():
            self._db.execute(
                f"INSERT INTO runs ({cols}) VALUES ({marks}) ON CONFLICT(key) DO UPDATE SET {updates}", values
            )
            row = self._db.execute("SELECT id FROM runs WHERE key = ?", (values["key"],)).fetchone()
        return int(row["id"])

    insert = upsert

    def set_status(self, run_id: int, status: str, error: str | None = None) -> None:
        """Mark a row ``failed`` / ``interrupted`` (or any status) with an optional error message."""
        if status not in STATUSES:
            raise UnlearnkitError(f"run status must be one of {STATUSES}, got {status!r}")
        with self._transaction():
            self._db.execute(
                "UPDATE runs SET status = ?, error = ?, updated = ? WHERE id = ?",
                (status, error, _now(), run_id),
            )

    def delete(self, run_id: int) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    # -- reading -----------------------------------------------------------------------------------------
    @staticmethod
    def _record(row: sqlite3.Row) -> RunRecord:
        d = dict(row)
        for c in _JSON_COLUMNS:
            if d[c] is not None:
                d[c] = json.loads(d[c])
        return RunRecord(**d)

    def get(self, run_id: int) -> RunRecord | None:
        """The row with id ``run_id``, or None."""
        row = self._db.execute("SELECT * FROM runs WHERE id = ?", (int(run_id),)).fetchone()
        return None if row is None else self._record(row)

    def find(self, chash: str, status: str | None = "done") -> RunRecord | None:
        """The latest row whose config hash is ``chash`` (finished ones only, by default), or None."""
        sql, args = "SELECT * FROM runs WHERE config_hash = ?", [chash]
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        row = self._db.execute(sql + " ORDER BY updated DESC, id DESC LIMIT 1", args).fetchone()
        return None if row is None else self._record(row)

    def query(self, limit: int | None = None, **filters: Any) -> list[RunRecord]:
        """Rows matching every given column filter (``kind``, ``suite``, ``family``, ``method``, ``seed``,
        ``status``, ``config_hash``, ``path``; ``None`` filters are ignored), oldest first."""
        unknown = sorted(set(filters) - set(_FILTERS))
        if unknown:
            raise UnlearnkitError(f"cannot filter runs by {unknown[0]!r}; filters: {', '.join(_FILTERS)}")
        where = [(k, v) for k, v in filters.items() if v is not None]
        sql = "SELECT * FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(f"{k} = ?" for k, _ in where)
        sql += " ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [self._record(r) for r in self._db.execute(sql, [v for _, v in where])]

    def __iter__(self) -> Iterator[RunRecord]:
        return iter(self.query())

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM runs").fetchone()[0])


def open_store(path: str | Path, readonly: bool = False) -> RunStore:
    """Open (creating if needed, unless ``readonly``) the store at ``path``: a ``.sqlite`` file, or a folder
    for ``runs.sqlite``."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / STORE_NAME
    return RunStore(p, readonly=readonly)


def index_run(
    out: str | Path,
    config: dict[str, Any],
    metrics: dict[str, Any],
    receipt: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> int | None:
    """Record a single run folder in its run store (replacing the row of an earlier run into the same
    folder); returns the row id, or None (with a warning) when the store cannot be written."""
    folder = Path(out).resolve()
    try:
        with open_store(store_path(folder, single_run=True)) as store:
            return store.upsert(
                kind="unlearn",
                key=f"unlearn:{folder}",
                config=config,
                family=config.get("family"),
                method=(config.get("method") or {}).get("name"),
                seed=config.get("seed"),
                metrics=metrics,
                fields=dict(extra or {}),
                receipt=receipt,
                path=folder,
            )
    except (sqlite3.Error, UnlearnkitError, OSError) as exc:
        warnings.warn(f"the run in {str(folder)!r} was not indexed in the run store: {exc}", stacklevel=2)
        return None
