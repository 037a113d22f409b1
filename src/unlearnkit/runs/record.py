"""Write a run folder: ``config.yaml``, ``results.json``, ``model.safetensors`` and ``receipt.json``.

The receipt lets anyone check later what was forgotten and by which model: the sha256 of the sorted
forget ids, of the weights before and after, and the metrics. Every file is written atomically.
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
    return receipt
