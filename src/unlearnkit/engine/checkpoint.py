"""Checkpoints from which a killed training run resumes to bit-identical weights.

One checkpoint is one folder, ``<run_dir>/checkpoints/<desc>/step-00000042/`` (42 optimizer steps done):

``model.safetensors``
    the weights and buffers, whole even when the run shards the model (FSDP version 2 gathers them to rank 0
    first); :func:`unlearnkit.io.load_weights` loads it into the model like any weights file (into a
    sharded model too: each rank takes its share).
``state.pt``
    optimizer state (under FSDP: gathered whole, keyed by parameter name) and learning-rate schedule state,
    every random-number-generator state (torch, CUDA, Python, NumPy, the engine's step generator and each
    data stream's shuffling generator) and the data order of the passes in progress. It holds only
    tensors, numbers, strings, lists and dicts, and is read back with ``torch.load(..., weights_only=True)``:
    nothing in it can run code.
``mask.safetensors``
    the weight mask (when the run has one), as 0/1 uint8 tensors.
``meta.json``
    the loop position (epoch, phase index, batches of the phase done, step), the history logged so far,
    the elapsed seconds and a fingerprint of the run (data sizes, batch sizes, epochs, processes,
    parameter shapes) that a resume must match.

A checkpoint is written into a hidden temporary folder next to it and renamed into place when every file
is complete, so a folder named ``step-*`` is always whole, whenever the process dies. The engine keeps the
previous checkpoint until the next step's loss, computed from the new checkpoint's weights, has passed the
divergence guard; then only the newest is kept (:func:`prune_checkpoints`). (Files are not fsync'ed: the
guarantee is against a killed process, not against a power cut.)
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unlearnkit.errors import UnlearnkitError
from unlearnkit.io import load_weights, save_state_dict, save_weights

FORMAT = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_root(run_dir: str | Path, desc: str) -> Path:
    """The folder that holds the checkpoints of the ``desc`` run (``train``, ``original``, a method name)."""
    return Path(run_dir) / "checkpoints" / desc


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint folder under ``root`` (None when there is none)."""
    root = Path(root)
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return max(found)[1] if found else None


def clear_checkpoints(root: str | Path) -> None:
    """Remove every checkpoint (and leftover temporary folder) under ``root``: a fresh run starts clean."""
    root = Path(root)
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and (_STEP_DIR.match(p.name) or p.name.startswith((".tmp-", ".old-"))):
                shutil.rmtree(p, ignore_errors=True)


@dataclass
class Checkpoint:
    """A checkpoint read back from disk (see the module docstring for what each part holds)."""

    path: Path
    meta: dict[str, Any]
    state: dict[str, Any]
    mask: dict[str, torch.Tensor] | None = None
    model_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.model_file = self.path / "model.safetensors"

    @property
    def step(self) -> int:
        return int(self.meta["position"]["step"])

    def load_model(self, model: nn.Module) -> nn.Module:
        """Load the checkpoint's weights into ``model`` (safetensors, no pickle)."""
        return load_weights(model, self.model_file)


def write_checkpoint(
    root: str | Path,
    step: int,
    model: nn.Module | dict[str, torch.Tensor],
    state: dict[str, Any],
    meta: dict[str, Any],
    mask: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write one checkpoint atomically (temporary folder + rename); older ones are left in place.

    ``model`` is the model, or its whole state dict (a sharded model's, gathered beforehand with
    ``unlearnkit.distributed.full_state_dict`` on every rank: this function runs on the main process alone).
    ``state`` must contain only tensors, numbers, strings, booleans, None, lists, tuples and dicts (what
    ``torch.load(weights_only=True)`` accepts); ``meta`` must be JSON-serialisable.
    """
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    tmp = root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        if isinstance(model, nn.Module):
            save_weights(model, tmp / "model.safetensors")
        else:
            save_state_dict(model, tmp / "model.safetensors")
        torch.save(state, tmp / "state.pt")
        if mask is not None:
            save_file(
                {k: v.to(torch.uint8).cpu().contiguous() for k, v in mask.items()}, tmp / "mask.safetensors"
            )
        (tmp / "meta.json").write_text(json.dumps({"format": FORMAT} | meta) + "\n")
        final = root / name
        if final.exists():  # the same step written again (e.g. a rerun): move the old one aside first
            old = root / f".old-{name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def prune_checkpoints(root: str | Path, keep: Path) -> None:
    """Remove every checkpoint under ``root`` but ``keep`` (and leftovers of interrupted writes)."""
    root = Path(root)
    for p in root.iterdir() if root.is_dir() else []:
        if p != keep and p.is_dir() and (_STEP_DIR.match(p.name) or p.name.startswith((".old-", ".tmp-"))):
            shutil.rmtree(p, ignore_errors=True)


def discard_checkpoint(path: Path) -> None:
    """Remove one checkpoint folder (its weights led to a diverged step)."""
    shutil.rmtree(path, ignore_errors=True)


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint folder; a clear error when it is incomplete, damaged or from another format."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        mask = load_file(str(path / "mask.safetensors")) if (path / "mask.safetensors").is_file() else None
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise UnlearnkitError(
            f"the checkpoint {str(path)!r} cannot be read ({type(exc).__name__}: {exc}); delete it to start "
            "the run afresh"
        ) from exc
    if meta.get("format") != FORMAT or not (path / "model.safetensors").is_file():
        raise UnlearnkitError(
            f"{str(path)!r} is not an unlearnkit checkpoint of format {FORMAT}; delete it to start afresh"
        )
    return Checkpoint(path, meta, state, mask)


# -- random-number generators -------------------------------------------------------------------------
def capture_rng() -> dict[str, Any]:
    """The global generators' states: torch (CPU and every initialised CUDA device), Python, NumPy."""
    import numpy as np

    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = list(torch.cuda.get_rng_state_all())
    return out


def restore_rng(saved: dict[str, Any]) -> None:
    """Put back the states :func:`capture_rng` returned."""
    import numpy as np

    torch.set_rng_state(saved["torch"])
    py = saved["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    n = saved["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    if "cuda" in saved and torch.cuda.is_available():
        states = saved["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
