"""Experiment trackers (``engine.tracker``): TensorBoard or Weights & Biases through accelerate's tracker API.

The engine hands ``log_with``/``project_dir`` to its ``Accelerator``, starts the tracker at its first
``fit`` and logs, every ``engine.log_every`` steps, the step loss of each phase, the learning rate and the
method's own logs; :meth:`Engine.log_final` adds the run's final metrics and closes the tracker. Keys are
``<desc>/<phase>/loss``, ``<desc>/<phase>/<log key>`` and ``<desc>/lr`` (``<desc>/lr/<group>`` with several
parameter groups), where ``desc`` names the training run (``train``, ``unlearn``, ...); final metrics are
``final/<metric>``. Output goes to ``engine.tracker_dir``, else the run folder, else a new temporary
folder: TensorBoard writes ``<dir>/tensorboard/events.out.tfevents.*``, W&B writes ``<dir>/wandb/`` and
runs offline (``WANDB_MODE=offline``) unless ``WANDB_MODE`` says otherwise.
"""

from __future__ import annotations

import importlib.util
import numbers
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unlearnkit.errors import ConfigError, did_you_mean

TRACKERS = ("none", "tensorboard", "wandb")
PROJECT = "unlearnkit"  # the W&B project; TensorBoard's run folder is named after the tracker


def check_tracker(name: str) -> None:
    """Refuse an unknown tracker name, or one whose package is missing, with a one-line fix."""
    if name not in TRACKERS:
        raise ConfigError(f"unknown engine.tracker={name!r}: {did_you_mean(str(name), list(TRACKERS))}")
    if name != "none" and not _installed(name):
        raise ConfigError(
            f"engine.tracker={name} needs the {name} package: pip install 'unlearnkit[{name}]' "
            "(or set engine.tracker=none)"
        )


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


class Tracking:
    """One engine's tracker: where it writes, whether it is running, and what it logs.

    accelerate keeps the tracker objects on the ``Accelerator`` (``acc.trackers``; only the main process
    has any), so each method takes the engine's accelerator.
    """

    def __init__(self, name: str, tracker_dir: str | None, run_dir: Path | None) -> None:
        self.name, self.tracker_dir, self.run_dir = name, tracker_dir, run_dir
        self._path: Path | None = None
        self.started = False
        self.last_step = 0  # where final metrics go: the last fit's final step

    @property
    def on(self) -> bool:
        return self.name != "none"

    @property
    def directory(self) -> Path | None:
        """``engine.tracker_dir``, else the run folder, else a new temporary folder (None when off)."""
        if not self.on:
            return None
        if self._path is None:
            if self.tracker_dir:
                self._path = Path(self.tracker_dir)
            elif self.run_dir is not None:
                self._path = self.run_dir
            else:
                self._path = Path(tempfile.mkdtemp(prefix="unlearnkit-tracker-"))
                warnings.warn(
                    f"engine.tracker={self.name} without a run folder writes to {self._path}; set "
                    "engine.tracker_dir to choose the folder",
                    stacklevel=2,
                )
        return self._path

    def accelerator_options(self) -> dict[str, Any]:
        """The ``Accelerator`` arguments that set up this tracker."""
        return {"log_with": self.name, "project_dir": str(self.directory)} if self.on else {}

    def start(self, acc) -> None:
        """Start the tracker (once; again after :meth:`end`)."""
        if not self.on or self.started:
            return
        run_name = self.run_dir.name if self.run_dir is not None else PROJECT
        project, kwargs = start_options(self.name, self.directory, run_name)
        acc.init_trackers(project, init_kwargs=kwargs)
        self.started = True

    def log_step(self, acc, desc: str, rec: Mapping[str, Any], lrs: list[float]) -> None:
        if self.on:
            acc.log(step_values(desc, rec, lrs), step=rec["step"])

    def log_final(self, acc, metrics: Mapping[str, Any]) -> None:
        """Log ``metrics`` (see :func:`final_values`) at the last fit's final step, then :meth:`end`."""
        if not self.on:
            return
        self.start(acc)
        acc.log(final_values(metrics), step=self.last_step)
        self.end(acc)

    def end(self, acc) -> None:
        """Close the tracker: TensorBoard's writer is flushed and closed, the W&B run finished."""
        if not self.started:
            return
        for tracker in acc.trackers:
            tracker.finish()
        acc.trackers.clear()
        self.started = False


def start_options(name: str, directory: Path, run_name: str) -> tuple[str, dict[str, Any]]:
    """``(project_name, init_kwargs)`` for ``Accelerator.init_trackers``."""
    if name == "wandb":
        mode = os.environ.get("WANDB_MODE", "offline")
        return PROJECT, {"wandb": {"dir": str(directory), "mode": mode, "name": run_name}}
    return name, {}


def step_values(desc: str, rec: Mapping[str, Any], lrs: list[float]) -> dict[str, float]:
    """The tracker's values for one logged step record (``{"epoch", "step", "phase", "loss", ...logs}``)."""
    phase = rec["phase"]
    out = {f"{desc}/{phase}/loss": float(rec["loss"])}
    for k, v in rec.items():
        if k not in ("epoch", "step", "phase", "loss") and _number(v):
            out[f"{desc}/{phase}/{k}"] = float(v)
    if len(lrs) == 1:
        out[f"{desc}/lr"] = float(lrs[0])
    else:
        out |= {f"{desc}/lr/{i}": float(lr) for i, lr in enumerate(lrs)}
    return out


def final_values(metrics: Mapping[str, Any], prefix: str = "final") -> dict[str, float]:
    """Numeric final metrics as ``final/<key>`` (nested mappings as ``final/<key>/<sub>``); private keys
    (starting with ``_``) and non-numbers are left out."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if str(k).startswith("_"):
            continue
        if isinstance(v, Mapping):
            out |= final_values(v, f"{prefix}/{k}")
        elif _number(v):
            out[f"{prefix}/{k}"] = float(v)
    return out


def _number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)
