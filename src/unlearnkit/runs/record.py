"""Write a run folder: ``config.yaml``, ``results.json``, ``model.safetensors``, ``receipt.json`` and a
model card ``README.md`` (``runs/card.py``), and index the run in the run store (``RUN/../runs.sqlite``,
or ``UNLEARNKIT_STORE``; ``runs/store.py``).

The receipt lets anyone check later what was forgotten and by which model: the sha256 of the sorted
forget ids, of the weights before and after, and the metrics. Every file is written atomically. A store
that cannot be written (read-only folder, locked file) only warns: the run folder is the record.
"""

from __future__ import annotations

import datetime as _dt
import platform
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from unlearnkit import __version__
from unlearnkit.io import save_weights, weights_sha256, write_json, write_text


def write_run(
    out: str | Path,
    config: dict[str, Any],
    model: nn.Module,
    metrics: dict[str, float],
    forget_ids_sha256: str,
    n_forget: int,
    weights_before_sha256: str,
    extra: dict[str, Any] | None = None,
    protect: list[str | Path] | None = None,
    tokenizer: Any = None,
) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(model, out / "model.safetensors", protect=protect)
    if hasattr(model, "save_pretrained"):  # a Hugging Face model: also a folder from_pretrained can load
        model.save_pretrained(out / "hf_model", safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(out / "hf_model")
    after = weights_sha256(model)
    results = {"metrics": metrics} | (extra or {})
    receipt = {
        "unlearnkit_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "method": config.get("method", {}).get("name"),
        "forget_ids_sha256": forget_ids_sha256,
        "forget_count": n_forget,
        "weights_before_sha256": weights_before_sha256,
        "weights_after_sha256": after,
        "metrics": metrics,
        "python": platform.python_version(),
    }
    write_text(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    write_json(out / "results.json", results)
    write_json(out / "receipt.json", receipt)
    from unlearnkit.runs.card import write_card

    write_card(out, config, receipt, metrics, (extra or {}).get("oracle"))
    index_run(out, config, metrics, receipt, extra)
    return receipt


def index_run(
    out: str | Path,
    config: dict[str, Any],
    metrics: dict[str, Any],
    receipt: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> int | None:
    """Record a single run folder in its run store (replacing the row of an earlier run into the same
    folder); returns the row id, or None (with a warning) when the store cannot be written."""
    import sqlite3
    import warnings

    from unlearnkit.errors import UnlearnkitError
    from unlearnkit.runs.store import open_store, store_path

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
