"""Run folders that never lie (issue 18): kills during the final write, concurrent writers, honest resumes,
file modes.

A kill is simulated by raising a ``BaseException`` from the k-th file operation of the final write (every
``open`` for writing, ``mkstemp``, ``mkdir``, ``chmod``, ``rename``/``replace``, ``unlink``, ``rmtree``, the
folder exchange and the store write), for every k; a handful of real ``kill -9``s of a subprocess check the
same at chosen points. Afterwards ``RUN`` must hold the old run whole or the new run whole (the receipt's
weights hash is the model file's, config, results and receipt name the same run), and once the next writer
has recovered, the store row must name that run.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from unlearnkit.errors import ConfigError, UnlearnkitError
from unlearnkit.io import state_dict_sha256, write_json
from unlearnkit.runs import folder as folder_mod
from unlearnkit.runs.folder import RunFolder, RunLock, lock_file, recover, work_folder
from unlearnkit.runs.record import write_run
from unlearnkit.runs.store import RunStore, open_store


class Killed(BaseException):
    """What a kill -9 does to the writer: nothing after this point runs (no ``except Exception``)."""


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def _write(out: Path, seed: int, overwrite: bool = False, model: nn.Module | None = None) -> dict:
    cfg = {"family": "vision", "seed": seed, "method": {"name": "ga", "lr": 0.01}}
    metrics = {"UA": float(seed), "TA": 100.0 - seed}
    m = model if model is not None else _model(seed)
    return write_run(out, cfg, m, metrics, f"ids-{seed}", 3, f"before-{seed}", overwrite=overwrite)


@contextlib.contextmanager
def _kill_at(k: int):
    """Raise :class:`Killed` at the ``k``-th file operation (k=0: never); yields the running count."""
    count = [0]

    def tick() -> None:
        count[0] += 1
        if count[0] == k:
            raise Killed(k)

    def wrap(fn):
        def inner(*args, **kwargs):
            tick()
            return fn(*args, **kwargs)

        return inner

    def wrap_open(fn):
        def inner(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+"):
                tick()
            return fn(file, mode, *args, **kwargs)

        return inner

    targets = [(os, n) for n in ("replace", "rename", "mkdir", "unlink", "rmdir", "chmod")]
    targets += [(shutil, "rmtree"), (tempfile, "mkstemp"), (folder_mod, "_exchange"), (RunStore, "upsert")]
    saved = [(mod, n, getattr(mod, n)) for mod, n in targets]
    saved += [(builtins, "open", builtins.open), (io, "open", io.open)]
    try:
        for mod, n, fn in saved:
            setattr(mod, n, wrap_open(fn) if n == "open" else wrap(fn))
        yield count
    finally:
        for mod, n, fn in saved:
            setattr(mod, n, fn)


def _which_run(out: Path) -> int | None:
    """The seed of the one whole run in ``out`` (None: no run); fails on a mix."""
    if not out.exists():
        return None
    names = {p.name for p in out.iterdir()}
    assert {"config.yaml", "results.json", "receipt.json", "model.safetensors", "README.md"} <= names, names
    seed = yaml.safe_load((out / "config.yaml").read_text())["seed"]
    results = json.loads((out / "results.json").read_text())
    receipt = json.loads((out / "receipt.json").read_text())
    assert results["metrics"]["UA"] == seed and receipt["forget_ids_sha256"] == f"ids-{seed}"
    assert receipt["weights_after_sha256"] == state_dict_sha256(load_file(out / "model.safetensors"))
    assert receipt["weights_after_sha256"] == state_dict_sha256(_model(seed).state_dict())
    assert receipt["weights_after_sha256"] in (out / "README.md").read_text()  # the card of this run
    return seed


def _store_rows(out: Path) -> list:
    db = out.parent / "runs.sqlite"
    if not db.exists():
        return []
    with open_store(db) as st:
        return [r for r in st.query(kind="unlearn") if r.path == str(out.resolve())]


def _check_store(out: Path, seed: int | None) -> None:
    rows = _store_rows(out)
    if seed is None:
        assert rows == []
        return
    (row,) = rows
    receipt = json.loads((out / "receipt.json").read_text())
    assert row.seed == seed and row.receipt["run_id"] == receipt["run_id"]


@pytest.mark.parametrize("reused", [False, True], ids=["fresh", "reused"])
def test_a_kill_at_any_file_operation_of_the_final_write_leaves_one_whole_run(tmp_path, reused):
    with _kill_at(0) as count:  # count the operations of an uninterrupted write
        if reused:
            _write(tmp_path / "warmup-old", 1)
        n0 = count[0]
        _write(tmp_path / "warmup-old", 2, overwrite=reused) if reused else _write(tmp_path / "warmup", 2)
        total = count[0] - n0
    assert total >= 20, total
    outcomes = set()
    for k in range(1, total + 1):
        out = tmp_path / f"k{k}" / "run"
        out.parent.mkdir()
        if reused:
            _write(out, 1)
        with _kill_at(k), pytest.raises(Killed):
            _write(out, 2, overwrite=reused)
        seen = _which_run(out)  # as the kill left it: the old run or the new one, whole
        assert seen in ((1, 2) if reused else (None, 2)), (k, seen)
        with RunLock(out):  # what the next writer does first
            recover(out)
        assert _which_run(out) == seen  # recovery never changes which run the folder holds
        _check_store(out, seen)  # and the store row names that run
        assert not (out.parent / ".run.old").exists() and not (out.parent / ".run.publishing").exists()
        if seen == 2:
            assert not work_folder(out).exists()  # the old run is gone once the new one is in place
        outcomes.add(seen)
        assert _write(out, 3, overwrite=True)  # and the folder takes a new run afterwards
        assert _which_run(out) == 3
        _check_store(out, 3)
    assert outcomes == ({1, 2} if reused else {None, 2})  # the kills hit both sides of the publish


def test_a_hugging_face_run_is_whole_after_a_kill(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=16, n_positions=8, n_embd=8, n_layer=1, n_head=2))
    with _kill_at(0) as count:
        _write(tmp_path / "count", 0, model=lm)
    for k in range(1, count[0] + 1, 3):
        out = tmp_path / f"k{k}" / "run"
        with _kill_at(k), pytest.raises(Killed):
            _write(out, 0, model=lm)
        if out.exists():  # a published HF run has its weights, not only config.json
            assert {"config.json", "model.safetensors", "README.md"} <= {
                p.name for p in (out / "hf_model").iterdir()
            }
            sd = load_file(out / "model.safetensors")
            assert json.loads((out / "receipt.json").read_text())[
                "weights_after_sha256"
            ] == state_dict_sha256(sd)


_CHILD = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_run_folders import _write
from unlearnkit.runs import folder
point, ready = {point!r}, Path({ready!r})
def stall(*args, **kwargs):
    ready.write_text(str(os.getpid()))
    time.sleep(120)

if point == "exchange":
    folder._exchange = stall
else:
    folder.shutil.rmtree = stall
_write(Path({out!r}), 2, overwrite=True)
"""


@pytest.mark.parametrize("point,expect", [("exchange", 1), ("rmtree", 2)])
def test_kill_9_during_publish_and_a_second_writer(tmp_path, point, expect):
    out = tmp_path / "run"
    _write(out, 1)
    ready = tmp_path / "ready"
    code = _CHILD.format(tests=str(Path(__file__).parent), point=point, ready=str(ready), out=str(out))
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent / "src"), *sys.path])}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready.exists(), proc.stderr.read().decode()[-2000:]
        # a second writer while the first one publishes: refused, naming the running process
        with pytest.raises(UnlearnkitError, match=f"another unlearnkit process is writing .*PID {proc.pid} "):
            _write(out, 4, overwrite=True)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert json.loads(lock_file(out).read_text())["pid"] == proc.pid  # the dead writer's lock is left
    assert _which_run(out) == expect
    _write(out, 3, overwrite=True)  # the lock of a dead process is taken over; recovery first
    assert _which_run(out) == 3 and not lock_file(out).exists()
    _check_store(out, 3)


def test_a_stale_lock_of_a_dead_pid_is_taken_over_and_a_live_one_refuses(tmp_path):
    out = tmp_path / "run"
    lock_file(out).parent.mkdir(parents=True, exist_ok=True)
    lock_file(out).write_text(json.dumps({"pid": 2**22 + 7, "host": "h", "started": "t", "command": "c"}))
    _write(out, 1)
    assert _which_run(out) == 1
    busy = pytest.raises(UnlearnkitError, match=f"PID {os.getpid()} on ")
    with RunFolder(out, {"method": {"name": "ga"}}, overwrite=True), busy:
        _write(out, 2, overwrite=True)
    assert _which_run(out) == 1


def test_a_folder_holding_a_run_is_refused_without_overwrite(tmp_path):
    out = tmp_path / "run"
    _write(out, 1)
    with pytest.raises(ConfigError, match="already holds a run \\(method ga, seed 1.*--overwrite"):
        _write(out, 2)
    assert _which_run(out) == 1
    _write(out, 2, overwrite=True)
    assert _which_run(out) == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no old run, lock or work
    _check_store(out, 2)


def test_outputs_honour_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
    old = os.umask(0o022)
    try:
        _write(tmp_path / "run", 1)
        modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").iterdir()}
        assert set(modes.values()) == {0o644}, modes  # not mkstemp's 0600
        assert (tmp_path / "run").stat().st_mode & 0o777 == 0o755
    finally:
        os.umask(old)


# -- resume: the whole config must match the run's, or the change is recorded --------------------------


@pytest.mark.parametrize(
    "key,value",
    [
        ("method.lr", 0.001),
        ("method.mask_ratio", 0.9),
        ("engine.batch_size", 128),
        ("seed", 1),
        ("data.test_fraction", 0.3),
        ("split.forget", 0.2),
        ("model.hidden", 64),
        ("train.epochs", 5),
    ],
)
def test_resume_refuses_each_kind_of_changed_key(key, value, tmp_path):
    from unlearnkit.config import apply_overrides
    from unlearnkit.runs.resume import check_resume

    saved = {
        "seed": 0,
        "data": {"name": "digits", "test_fraction": 0.2},
        "split": {"kind": "random", "forget": 0.1},
        "model": {"name": "mlp", "hidden": 128},
        "train": {"epochs": 2},
        "method": {"name": "salun", "lr": 0.0007, "mask_ratio": 0.5},
        "engine": {"batch_size": 64, "progress": True},
    }
    changed = apply_overrides(saved, [f"{key}={value}"])
    with pytest.raises(ConfigError, match=f"differs from the run's in 1 key\\(s\\): {key} "):
        check_resume(saved, changed, False, tmp_path)
    assert check_resume(saved, changed, True, tmp_path) == [key]
    quiet = apply_overrides(saved, ["engine.progress=false"])  # the progress bar changes no result
    assert check_resume(saved, quiet, False, tmp_path) == []
    with pytest.raises(ConfigError, match="holds a run of method 'salun', not 'ga'"):
        check_resume(saved, apply_overrides(changed, ["method.name=ga"]), True, tmp_path)


def _ft(*overrides: str) -> dict:
    from unlearnkit.config import apply_overrides, load_preset

    base = ["train.epochs=2", "engine.progress=false", "method.epochs=3", "engine.checkpoint_steps=10"]
    return apply_overrides(load_preset("vision/ft"), [*base, *overrides])


def test_resume_of_a_killed_run_with_changes_is_refused_or_recorded(tmp_path, monkeypatch):
    from unlearnkit.api import run_config
    from unlearnkit.families.vision import VisionFamily

    run_config(_ft(), out=tmp_path / "whole")  # caches the original: only unlearning steps are counted
    real, calls = VisionFamily.mean_loss, [0]

    def interrupted(self, model, batch):
        calls[0] += 1
        if calls[0] == 36:  # in step 36; the last checkpoint holds 30 steps
            raise KeyboardInterrupt
        return real(self, model, batch)

    monkeypatch.setattr(VisionFamily, "mean_loss", interrupted)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_config(_ft(), out=out)
    monkeypatch.setattr(VisionFamily, "mean_loss", real)
    assert not out.exists() and (work_folder(out) / "config.yaml").is_file()

    with pytest.raises(ConfigError, match=r"1 key\(s\): method.lr \(0.05 -> 0.02\).*--resume-with-changes"):
        run_config(_ft("method.lr=0.02"), out=out, resume=True)
    with pytest.raises(ConfigError, match="holds a run of method 'ft', not 'ga'"):
        run_config(_ft("method.name=ga"), out=out, resume=True)
    with pytest.raises(ConfigError, match="holds a run of method 'ft', not 'ga'"):
        run_config(_ft("method.name=ga"), out=out, resume_with_changes=True)
    assert not out.exists()  # the refusals wrote nothing

    res = run_config(_ft("method.lr=0.02"), out=out, resume_with_changes=True)
    (change,) = res["receipt"]["config_changes"]
    assert change["at_step"] == 30 and change["changed_keys"] == ["method.lr"]
    assert change["before"]["method"]["lr"] == 0.05 and change["after"]["method"]["lr"] == 0.02
    assert json.loads((out / "receipt.json").read_text())["config_changes"] == [change]
    text = (out / "config.yaml").read_text()
    assert yaml.safe_load(text)["method"]["lr"] == 0.02  # still a loadable config: the one run last
    assert "# at step 30, changed method.lr; the config before:" in text and "#     lr: 0.05" in text
    card = (out / "README.md").read_text()
    assert "## Resumed with a changed config" in card and "| 30 | `method.lr` | `0.05` | `0.02` |" in card
    whole = json.loads((tmp_path / "whole" / "receipt.json").read_text())["weights_after_sha256"]
    assert res["receipt"]["weights_after_sha256"] != whole  # the last steps ran at the new rate

    # a finished run resumed with its own config goes on from its last checkpoint to the same weights
    again = run_config(_ft("method.lr=0.02"), out=out, resume=True)
    assert again["receipt"]["weights_after_sha256"] == res["receipt"]["weights_after_sha256"]
    assert again["receipt"]["config_changes"] == [change]  # the history stays with the run
