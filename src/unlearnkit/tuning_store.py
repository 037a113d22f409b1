"""A stopped tuning resumes: ``tune --out DIR`` keeps each training run's trials in ``DIR/tune.partial.json``
as the run ends, and a rerun of the same tuning replays them instead of training again.

A tuning's plan is a function of its trials' scores (each next step is chosen from the trials so far), so
replaying the stored runs in order brings the plan to where it stopped, and the tuning goes on from there
with the same choices it would have made. The file is tied to what the trials depend on: a sha256 over the
model's weights, the scored sets (their tensors, ids and transform, e.g. an image processor's config), the
method's fixed options, the engine's settings, the seed, the number of classes, ``every_epoch`` and
``max_shadow``. The budget is not part of it: a rerun with a larger ``max_trials`` reuses the runs done. A
file of another tuning is replaced at the first run that ends. The file is removed once ``tune.json`` is
written.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from torch import nn

from unlearnkit.data.splits import Split
from unlearnkit.io import state_dict_cpu, state_dict_sha256, write_json

PARTIAL = "tune.partial.json"


def _sets_sha256(split: Split) -> str:
    h = hashlib.sha256()
    named = [("forget", split.forget), ("retain", split.retain), ("test", split.test)]
    if split.test_forgotten is not None:
        named.append(("test_forgotten", split.test_forgotten))
    for name, s in named:
        h.update(f"{name}:{_describe(s.transform)}:".encode())
        h.update(state_dict_sha256(dict(s.columns) | {"__ids__": s.ids}).encode())
    return h.hexdigest()


def _describe(transform: Any) -> str:
    """A set's batch transform, as it reads the same in every process: a function by its qualified name, an
    object by its own ``__repr__`` where it has one (e.g. an image processor's config), else by its type."""
    if transform is None or hasattr(transform, "__qualname__"):
        return getattr(transform, "__qualname__", "None")
    own = type(transform).__repr__ is not object.__repr__
    return repr(transform) if own else type(transform).__qualname__


def fingerprint(model: nn.Module, split: Split, k: int, **settings: Any) -> str:
    """sha256 of what a tuning's trials depend on (the module doc); ``settings`` as JSON."""
    h = hashlib.sha256()
    h.update(state_dict_sha256(state_dict_cpu(model)).encode())
    h.update(_sets_sha256(split).encode())
    h.update(json.dumps({"k": k} | settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _key(options: dict[str, Any]) -> str:
    return json.dumps(options, sort_keys=True)


class TrialStore:
    """The finished runs of one tuning in ``folder/tune.partial.json`` (the module doc).

    ``runs`` maps a run's options (as JSON) to the trials it gave, as dicts; ``stale`` says that the folder
    held the runs of another tuning, which the first run to end replaces."""

    def __init__(self, folder: str | Path, key: str) -> None:
        self.path = Path(folder) / PARTIAL
        self.key = key
        self.runs: dict[str, list[dict[str, Any]]] = {}
        self.stale = False
        if self.path.is_file():
            try:
                saved = json.loads(self.path.read_text())
            except (OSError, ValueError):
                saved = {}
            if saved.get("key") == key and isinstance(saved.get("runs"), dict):
                self.runs = saved["runs"]
            else:
                self.stale = True

    def get(self, options: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The trials of the finished run with these options, or None."""
        return self.runs.get(_key(options))

    def put(self, options: dict[str, Any], trials: list[dict[str, Any]]) -> None:
        """Keep a finished run's trials (the file is rewritten atomically)."""
        self.runs[_key(options)] = trials
        write_json(self.path, {"key": self.key, "runs": self.runs})
