"""The original model (loaded, built or trained, and cached) and the oracle model (given, fine-tuned from a
base, or retrained; cached).

A cache entry's key is the hash of everything that determines its weights: family, data, model, recipe,
seed, the engine settings that change the trajectory (batch size, process count, device kind, sharding),
and the versions of unlearnkit and torch; the oracle's adds its method and the forget set."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unlearnkit import version
from unlearnkit.engine.loop import is_main_process
from unlearnkit.errors import ConfigError
from unlearnkit.experiment.oracle_source import needs_source_message, pretrained
from unlearnkit.experiment.run import run_method, train_original, with_model_path
from unlearnkit.experiment.setup import Setup
from unlearnkit.families.base import Original
from unlearnkit.io import load_weights, save_weights, write_json
from unlearnkit.methods.base import Method
from unlearnkit.paths import cache_root


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_key(setup: Setup, **extra: Any) -> str:
    """The key of a model trained under ``setup`` (plus ``extra`` fields, e.g. the oracle's forget set)."""
    ecfg = setup.engine_cfg
    device = ecfg.device if ecfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return _hash(
        {
            "family": setup.cfg["family"],
            "data": setup.cfg["data"],
            # gradient checkpointing changes memory, not weights
            "model": {
                k: v for k, v in setup.cfg["model"].items() if k not in ("lora", "gradient_checkpointing")
            },
            "train": setup.cfg["train"],
            "seed": setup.seed,
            "batch_size": ecfg.batch_size,
            "processes": int(os.environ.get("WORLD_SIZE", "1")),
            "device": device,
            "fsdp": ecfg.fsdp,
            "versions": {"unlearnkit": version.__version__, "torch": torch.__version__.split("+")[0]},
        }
        # mixed precision and accumulation change the weights; left out at their defaults (older keys stay)
        | {
            k: v
            for k, v in (("precision", ecfg.precision), ("grad_accum", ecfg.grad_accum))
            if v not in (None, "fp32", 1)
        }
        | extra
    )


def original_model(setup: Setup, use_cache: bool = True, resume: bool = False) -> Original:
    """The model to unlearn: the family's own (a text-to-image world with its judge), a pretrained folder,
    ``model.path`` weights, the cache, or trained on forget ∪ retain and cached.

    The original is trained on the full training set, so it does not depend on the forget split. When
    checkpoints are on (or ``resume``), its training checkpoints go to the cache folder, and ``resume``
    continues a killed training."""
    mcfg = setup.cfg["model"]
    own = setup.family.load_original(mcfg, setup.data, setup.split)
    if own is not None:
        return own
    model = setup.new_model()
    if mcfg.get("name") == "hf":  # a pretrained folder: the builder already loaded its weights
        setup.family.validate(model, setup.split.forget)
        return Original(model, {"source": str(mcfg.get("path"))})
    if mcfg.get("path"):
        load_weights(model, mcfg["path"])
        setup.family.validate(model, setup.split.forget)
        return Original(model, {"source": str(mcfg["path"])})
    folder = cache_root() / "originals" / cache_key(setup)
    weights = folder / "model.safetensors"
    if use_cache and weights.is_file():
        load_weights(model, weights)
        meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").is_file() else {}
        return Original(model, meta | {"source": "cache", "cache": str(folder)})
    setup.family.validate(model, setup.split.forget)
    ecfg = setup.engine_cfg
    ckpt = use_cache and (resume or ecfg.checkpoint_every > 0 or ecfg.checkpoint_steps > 0)
    res = train_original(setup, model, folder if ckpt else None, resume=resume)
    meta = {
        "train_seconds": res.seconds,
        "steps": res.steps,
        "config": {k: setup.cfg[k] for k in ("family", "data", "model", "train", "seed")},
    }
    if use_cache:
        save_weights(model, weights)  # every rank: a sharded model is gathered collectively; rank 0 writes
        if is_main_process():
            write_json(folder / "meta.json", meta)
    return Original(model, meta | {"source": "trained"})


def oracle_model(
    setup: Setup, method: Method, original: nn.Module, use_cache: bool = True
) -> tuple[nn.Module, float]:
    """The oracle model for this split, as the ``oracle:`` section says (``experiment/oracle_source.py``):
    the retain model given by ``oracle.model.path`` (0 seconds: nothing trained here); ``oracle.base``
    fine-tuned on the retain set by ``method`` (``retrain`` with the ``train:`` recipe), cached under the
    base folder's identity; or, with no source, ``method`` from a fresh initialisation, cached by the
    original's key plus the method and forget set (refused for a pretrained folder, see
    :func:`~unlearnkit.experiment.oracle_source.needs_source_message`).

    Returns the model and the wall seconds its training took (from the cache's record when reused), so a
    suite's RTE column stays the real cost of retraining."""
    src = setup.oracle
    if src.stats is not None:
        raise ConfigError(
            f"oracle.stats={src.stats} holds an oracle's values, not its model: this run needs the oracle "
            "model itself; give oracle.base=DIR or oracle.model.path=DIR instead"
        )
    if src.model_path is not None:
        return _given_model(setup, src.model_path), 0.0
    extra: dict[str, Any] = {}
    if src.base is not None:
        setup = with_model_path(setup, src.base)  # its fresh model (retrain's starting point) is the base
        extra = {"oracle_base": folder_identity(src.base)}
    elif pretrained(setup.cfg):
        raise ConfigError(needs_source_message(setup.cfg))
    key = cache_key(
        setup,
        method=vars(method.cfg),
        forget=setup.split.forget_ids_sha256(),
        n_retain=len(setup.split.retain),
        full_model=setup.cfg["model"],
        **extra,
    )
    folder = cache_root() / "oracles" / key
    weights = folder / "model.safetensors"
    if use_cache and weights.is_file() and (folder / "meta.json").is_file():
        model = setup.new_model()
        load_weights(model, weights)
        return model, float(json.loads((folder / "meta.json").read_text())["seconds"])
    model, seconds, _ = run_method(setup, original, method)
    if use_cache:
        save_weights(model, weights)  # every rank: a sharded model is gathered collectively; rank 0 writes
        if is_main_process():
            write_json(folder / "meta.json", {"seconds": seconds})
    return model, seconds


def _given_model(setup: Setup, path: str) -> nn.Module:
    """The retain model at ``path``: a pretrained folder (loaded by the builder) or a weights file."""
    model = with_model_path(setup, path).new_model()
    if not pretrained(setup.cfg):
        load_weights(model, path)
    return model


def folder_identity(path: str) -> dict[str, Any]:
    """A model folder's identity for cache keys: its config and the name, size and modification time of
    each weights file (cheap on multi-GB checkpoints; a rewritten or copied file is a new identity)."""
    folder = Path(path).expanduser().resolve()
    files = sorted(
        p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt") or p.name == "config.json"
    )
    return {"files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}
