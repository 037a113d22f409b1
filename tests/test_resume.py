"""Resume through the command line, and determinism of whole runs.

The kill test starts ``python -m unlearnkit.cli unlearn`` in a subprocess with a checkpoint after every
step, kills it with SIGKILL once it is well into unlearning, reruns the command with ``--resume`` (in the
test process: the same code path without another start-up) and compares it
with an uninterrupted run of the same config: the metrics (wall time aside), the sha256 of the final
weights and the per-step training log must be identical. (The subprocess costs a few seconds of start-up.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unlearnkit.api import run_config
from unlearnkit.cli import main
from unlearnkit.config import apply_overrides, load_preset
from unlearnkit.runs.folder import work_folder

# ft on digits: a 2-epoch original (cached for the session), 6 epochs x 21 steps of unlearning
BASE = ["train.epochs=2", "engine.progress=false", "method.epochs=6"]


def _cfg(overrides: list[str]) -> dict:
    return apply_overrides(load_preset("vision/ft"), overrides)


def _outcome(out: Path) -> tuple[dict, str, list[str]]:
    results = json.loads((out / "results.json").read_text())
    metrics = {k: v for k, v in results["metrics"].items() if k != "RTE"}  # RTE is wall time
    sha = json.loads((out / "receipt.json").read_text())["weights_after_sha256"]
    return metrics, sha, (out / "log-ft.jsonl").read_text().splitlines()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "unlearnkit.cli", "unlearn", "--preset", "vision/ft", *args]


def test_kill_9_then_resume_gives_the_uninterrupted_result(tmp_path, capsys):
    run_config(_cfg(BASE), out=tmp_path / "whole")  # also caches the original for the subprocesses
    want = _outcome(tmp_path / "whole")

    out = tmp_path / "killed"
    args = ["--out", str(out), "--json", *BASE, "engine.checkpoint_steps=1"]
    env = os.environ.copy()  # carries the session's private UNLEARNKIT_CACHE
    proc = subprocess.Popen(_cli(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = work_folder(out) / "checkpoints" / "ft"  # a run is written in a hidden folder until complete
    step = 0
    deadline = time.monotonic() + 120
    try:
        while step < 10 and time.monotonic() < deadline and proc.poll() is None:
            names = [p.name for p in root.iterdir() if p.name.startswith("step-")] if root.is_dir() else []
            step = max([int(n[5:]) for n in names], default=0)
            time.sleep(0.01)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()!r}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "results.json").exists()
    killed_at = max(int(p.name[5:]) for p in root.iterdir() if p.name.startswith("step-"))
    assert 10 <= killed_at < 126  # killed mid-run

    capsys.readouterr()
    # the same command with --resume, here in the test process (the same code path, minus a start-up)
    assert main(["unlearn", "--preset", "vision/ft", *args, "--resume"]) == 0
    assert json.loads(capsys.readouterr().out)["UA"] == want[0]["UA"]
    got = _outcome(out)
    assert got[0] == want[0]
    assert got[1] == want[1]  # bit-identical final weights
    assert got[2] == want[2]  # and the same loss at every step


def test_train_resume_after_an_interrupt(tmp_path, monkeypatch, capsys):
    from unlearnkit.families.vision import VisionFamily
    from unlearnkit.io import file_sha256

    real, calls = VisionFamily.mean_loss, [0]

    def counted(self, model, batch):
        calls[0] += 1
        if calls[0] == stop_at:
            raise KeyboardInterrupt
        return real(self, model, batch)

    monkeypatch.setattr(VisionFamily, "mean_loss", counted)
    args = ["train", "--preset", "vision/ft", "--json", "train.epochs=3", "engine.progress=false"]
    monkeypatch.setenv("UNLEARNKIT_CACHE", str(tmp_path / "cache-a"))
    stop_at = 0
    assert main([*args, "--out", str(tmp_path / "a.safetensors")]) == 0
    steps = calls[0]

    monkeypatch.setenv("UNLEARNKIT_CACHE", str(tmp_path / "cache-b"))
    b = str(tmp_path / "b.safetensors")
    calls[0], stop_at = 0, 36  # interrupted in step 35; the last checkpoint holds 30 steps
    assert main([*args, "--out", b, "engine.checkpoint_steps=10"]) == 130
    assert not Path(b).exists()
    calls[0], stop_at = 0, 0
    capsys.readouterr()
    assert main([*args, "--out", b, "engine.checkpoint_steps=10", "--resume"]) == 0
    assert calls[0] == steps - 30  # it went on from step 30
    assert file_sha256(b) == file_sha256(tmp_path / "a.safetensors")


def test_same_config_and_seed_give_identical_metrics(tmp_path, monkeypatch):
    """Two complete runs, each training its own original (fresh caches), agree exactly."""
    outcomes = []
    for name in ("a", "b"):
        monkeypatch.setenv("UNLEARNKIT_CACHE", str(tmp_path / f"cache-{name}"))
        res = run_config(_cfg([*BASE[:2], "method.epochs=2"]), out=tmp_path / name)
        assert res["original"]["source"] == "trained"
        outcomes.append(_outcome(tmp_path / name))
    assert outcomes[0] == outcomes[1]


def test_resume_needs_an_output_folder():
    from unlearnkit.errors import ConfigError

    with pytest.raises(ConfigError, match="--resume needs"):
        run_config(_cfg(BASE), resume=True)
