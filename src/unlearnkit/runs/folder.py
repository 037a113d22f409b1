"""Run folders that never lie: one writer at a time, staged writes, one rename to publish.

A run into ``RUN`` is written in the hidden work folder ``RUN/../.RUN.partial/`` (the engine's checkpoints and
logs go there too) and made visible whole: a fresh ``RUN`` by one ``rename``, a ``RUN`` that holds an older
run (``--overwrite``, ``--resume``) by one atomic exchange of the two folders (Linux ``renameat2`` with
``RENAME_EXCHANGE``; elsewhere the old run is renamed aside to ``.RUN.old`` first and restored by the next
writer if the process dies between the two renames). The old run is deleted only once the new one is in place.
After a kill at any point ``RUN`` is therefore the old run whole or the new run whole, never a mix.

The run store row follows the folder: it is written after the folder is published, and every writer (and
:func:`recover`) re-indexes the folder's run when the row names another one (receipts carry a ``run_id``).

``RUN/../.RUN.lock`` holds an exclusive ``flock`` for the writer's lifetime and names its PID, host and
command; a second writer is refused with that name. The kernel drops the lock when its holder dies, so the
lock file of a killed (dead) writer is simply taken over.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import fcntl
import json
import os
import shutil
import socket
import sqlite3
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml

from unlearnkit.distributed import is_main_process
from unlearnkit.errors import ConfigError, UnlearnkitError
from unlearnkit.io import write_json, write_text
from unlearnkit.runs.resume import check_resume, latest_step, normalized
from unlearnkit.runs.store import index_run, open_store, store_path

# a folder holding any of these is (part of) a run
RUN_ENTRIES = ("receipt.json", "config.yaml", "results.json", "model.safetensors", "hf_model", "checkpoints")
CHANGES_FILE = "config-changes.json"


def work_folder(out: str | Path) -> Path:
    """The hidden folder a run into ``out`` is written in before it is published."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def aside_folder(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}.old"


def journal_file(out: str | Path) -> Path:
    """Names the run being published (its ``run_id``): a kill mid-publish is finished by :func:`recover`."""
    out = Path(out)
    return out.parent / f".{out.name}.publishing"


def lock_file(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}.lock"


def holds_run(folder: str | Path) -> bool:
    folder = Path(folder)
    return folder.is_dir() and any((folder / e).exists() for e in RUN_ENTRIES)


def _describe(folder: Path) -> str:
    """'method ga, seed 0, written 2026-...' for a finished run folder, 'an unfinished run' otherwise."""
    try:
        cfg = yaml.safe_load((folder / "config.yaml").read_text()) or {}
        receipt = json.loads((folder / "receipt.json").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return "an unfinished run"
    method = (cfg.get("method") or {}).get("name") if isinstance(cfg, dict) else None
    seed = cfg.get("seed") if isinstance(cfg, dict) else None
    return f"a run (method {method}, seed {seed}, written {receipt.get('created')})"


def check_out_folder(out: str | Path, overwrite: bool = False, resume: bool = False) -> Path:
    """Refuse an ``--out`` a run cannot be written to (read-only checks, safe on every rank)."""
    out = Path(out)
    for p in (out, *out.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                what = "--out" if p == out else f"--out {str(out)!r}: its parent"
                raise ConfigError(
                    f"{what} {str(p)!r} is an existing file, not a folder: a run is written to a folder; "
                    "choose a new folder path"
                )
            break
    if out.is_dir() and any(out.iterdir()):
        if not holds_run(out):
            raise ConfigError(
                f"--out {str(out)!r} is a non-empty folder that holds no run: choose a new or empty folder "
                "(unlearnkit does not write a run between other files)"
            )
        if not (overwrite or resume):
            raise ConfigError(
                f"--out {str(out)!r} already holds {_describe(out)}; pass --overwrite to replace it (the old "
                "run is kept until the new one is complete), --resume to continue it, or choose another "
                "folder"
            )
    return out


class RunLock:
    """An exclusive, process-lifetime lock on writing ``out`` (see the module docstring)."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.path = lock_file(out)
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for _ in range(10):
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.read(fd, 4096).decode(errors="replace")
                    os.close(fd)
                    raise UnlearnkitError(
                        f"another unlearnkit process is writing {str(self.out)!r} ({_holder(holder)}); wait "
                        "for it to finish or stop it, or choose another --out"
                    ) from None
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if same:  # not a lock file its last holder removed while we waited on it
                    break
                os.close(fd)
            else:
                raise UnlearnkitError(f"could not take the lock {str(self.path)!r}: it keeps being replaced")
            me = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "command": " ".join(sys.argv)[:300],
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
        except OSError as exc:
            raise ConfigError(
                f"cannot write the run folder {str(self.out)!r} ({exc.strerror or exc}): choose a writable "
                "--out"
            ) from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            with contextlib.suppress(OSError):
                self.path.unlink()
        finally:
            os.close(fd)  # closing drops the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _holder(text: str) -> str:
    try:
        h = json.loads(text)
        return f"PID {h['pid']} on {h['host']}, since {h['started']}: {h['command']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not written its name yet"


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two folders (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    fn = getattr(_libc(), "renameat2", None) if sys.platform.startswith("linux") else None
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (38, 22, 95):  # ENOSYS, EINVAL (file system without exchange), EOPNOTSUPP
        return False
    raise OSError(err, os.strerror(err), str(b))


_LIBC: Any = None


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def _run_id(folder: Path) -> str | None:
    try:
        return json.loads((folder / "receipt.json").read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def publish(work: Path, out: Path) -> None:
    """Make the complete run in ``work`` visible as ``out`` (see the module docstring); the run that was in
    ``out`` is deleted afterwards. A journal names the new run meanwhile: after the swap ``work`` holds the
    old run, and :func:`recover` must not take it for an unpublished one."""
    journal = journal_file(out)
    write_json(journal, {"run_id": _run_id(work)})
    if out.is_dir() and any(out.iterdir()):
        if _exchange(work, out):
            shutil.rmtree(work)  # now the old run
        else:
            aside = aside_folder(out)
            os.rename(out, aside)
            os.rename(work, out)  # a kill between the renames: the next writer restores ``aside`` (recover)
            shutil.rmtree(aside)
    else:
        os.rename(work, out)  # onto a missing or empty folder: one rename
    journal.unlink()


def recover(out: str | Path) -> None:
    """Finish what a killed writer left (call it holding the lock): restore a run renamed aside, drop a
    leftover old run, and make the store row name the run that is in the folder."""
    out = Path(out)
    aside, journal = aside_folder(out), journal_file(out)
    if journal.exists():
        try:
            new = json.loads(journal.read_text()).get("run_id")
        except (OSError, ValueError, AttributeError):
            new = None
        if new is not None and _run_id(out) == new:  # the swap happened: what is left is the old run
            shutil.rmtree(work_folder(out), ignore_errors=True)
        journal.unlink()
    if aside.exists():
        if out.exists():
            shutil.rmtree(aside)
        else:
            os.rename(aside, out)
    reindex(out)


def reindex(out: str | Path) -> None:
    """Make the run store row of ``out`` agree with the folder (its run, or no row for no run)."""

    folder = Path(out).resolve()
    try:
        receipt = json.loads((folder / "receipt.json").read_text())
        config = yaml.safe_load((folder / "config.yaml").read_text())
        results = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        receipt = None
    key = f"unlearn:{folder}"
    try:
        path = store_path(folder, single_run=True)
        if not path.is_file() and receipt is None:
            return
        with open_store(path) as store:
            rows = [r for r in store.query(kind="unlearn", path=str(folder)) if r.key == key]
            row = rows[0] if rows else None
            if receipt is None:
                if row is not None:
                    store.delete(row.id)
                return
            if row is not None and (row.receipt or {}).get("run_id") == receipt.get("run_id"):
                return

        extra = {k: v for k, v in results.items() if k != "metrics"}
        index_run(folder, config, results.get("metrics", {}), receipt, extra)
    except (sqlite3.Error, UnlearnkitError, OSError) as exc:
        warnings.warn(f"the run store could not be brought in line with {str(folder)!r}: {exc}", stacklevel=2)


class RunFolder:
    """The life of one run into ``out``: checks, lock, recovery, the work folder, and the final publish.

    Use as a context manager around the whole run; the engine writes its checkpoints to :attr:`work`;
    :meth:`publish_run` (called by ``write_run``) makes the finished run visible and indexes it. Under
    several processes only the main one locks and writes; every rank runs the read-only checks.
    """

    def __init__(
        self,
        out: str | Path,
        config: dict[str, Any],
        overwrite: bool = False,
        resume: bool = False,
        allow_changes: bool = False,
    ) -> None:
        self.out = Path(out)
        self.config = config
        self.overwrite = overwrite
        self.resume = resume or allow_changes
        self.allow_changes = allow_changes
        self.work = work_folder(self.out)
        self.changes: list[dict[str, Any]] = []
        self._lock = RunLock(self.out)
        self._main = True
        self._fresh = False

    def __enter__(self) -> RunFolder:
        check_out_folder(self.out, self.overwrite, self.resume)
        self._main = is_main_process()
        if not self._main:
            return self
        self._lock.acquire()
        try:
            recover(self.out)
            self._prepare()
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        failed = exc_type is not None and issubclass(exc_type, Exception)  # an error, not an interrupt
        if self._main and failed and self._fresh and not (self.work / "checkpoints").exists():
            shutil.rmtree(self.work, ignore_errors=True)  # failed before any work worth resuming
        self._lock.release()

    def _prepare(self) -> None:
        config = normalized(self.config)
        source = next((f for f in (self.work, self.out) if (f / "config.yaml").is_file()), None)
        if not self.resume or source is None:
            self._fresh = True
            if self.work.exists():
                shutil.rmtree(self.work)
        else:
            saved = yaml.safe_load((source / "config.yaml").read_text()) or {}
            keys = check_resume(saved, config, self.allow_changes, self.out)
            if source == self.out:  # continue a published run: its checkpoints and history, copied
                if self.work.exists():
                    shutil.rmtree(self.work)
                self.work.mkdir()
                for entry in self.out.iterdir():
                    if entry.name == "checkpoints":
                        shutil.copytree(entry, self.work / entry.name)
                    elif entry.name == CHANGES_FILE or entry.name.startswith("log-"):
                        shutil.copy2(entry, self.work / entry.name)
            changes_file = self.work / CHANGES_FILE
            self.changes = json.loads(changes_file.read_text()) if changes_file.is_file() else []
            if keys:
                step = latest_step(self.work)
                self.changes.append({"at_step": step, "changed_keys": keys, "before": saved, "after": config})
                write_json(changes_file, self.changes)
        self.work.mkdir(parents=True, exist_ok=True)
        write_text(self.work / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def publish_run(self) -> None:
        """Publish the complete run in :attr:`work` as :attr:`out` (then the caller indexes it)."""
        publish(self.work, self.out)


def check_out_file(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse a weights file ``out`` (``train --out``) that cannot be written, or that exists (unless
    ``overwrite``): a folder at that path, a file where a parent folder should be, an unwritable place."""
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is an existing folder; train writes a .safetensors file there")
    if out.exists() and not overwrite:
        raise ConfigError(
            f"--out {str(out)!r} already exists; pass --overwrite to replace it, or choose another path"
        )
    for p in out.parents:
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"--out {str(out)!r}: its parent {str(p)!r} is a file, not a folder")
            break
    try:  # can a file be created there? (creates the missing parent folders, as the write would)
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.parent / f".{out.name}.probe-{os.getpid()}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"cannot write --out {str(out)!r} ({exc.strerror or exc}): choose a writable place"
        ) from None
    return out
