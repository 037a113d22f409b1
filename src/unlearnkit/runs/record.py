"""Write a run folder: ``config.yaml``, ``results.json``, ``model.safetensors``, ``receipt.json`` and a
model card ``README.md`` (``runs/card.py``), and index the run in the run store (``RUN/../runs.sqlite``,
or ``UNLEARNKIT_STORE``; ``runs/store.py``).

The receipt lets anyone check later what was forgotten and by which model: the sha256 of the sorted
forget ids, of the weights before and after, and the metrics (and, from the engine, ``training``: the
precision, gradient accumulation and effective batch size); its ``run_id`` ties the store row to the
folder. The files are written into a hidden work folder and published whole with one rename
(``runs/folder.py``): a kill leaves the old run or the new one, never a mix. A store that cannot be written
(read-only folder, locked file) only warns: the run folder is the record.
"""

from __future__ import annotations

import datetime as _dt
import platform
import uuid
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from unlearnkit.distributed import is_main_process
from unlearnkit.io import (
    check_protected,
    save_state_dict,
    state_dict_cpu,
    state_dict_sha256,
    write_json,
    write_text,
)
from unlearnkit.runs.card import write_card
from unlearnkit.runs.folder import RunFolder
from unlearnkit.runs.resume import changes_header
from unlearnkit.runs.store import index_run
from unlearnkit.version import __version__


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
    folder: Any = None,
    overwrite: bool = False,
) -> dict[str, Any] | None:
    """Write the run folder ``out`` and return its receipt.

    ``folder`` is the open :class:`~unlearnkit.runs.folder.RunFolder` of a run that holds ``out`` already
    (its work folder gets the files); without it this call opens one (refusing an ``out`` that holds
    another run unless ``overwrite``).

    Under several processes rank 0 alone writes and returns the receipt; the other ranks return None.
    The weights of a sharded model (FSDP, DeepSpeed ZeRO-3) are gathered whole first, a collective: then
    every rank must call this function (a plain model may be written from rank 0 alone).
    """
    out = Path(out)
    check_protected(out / "model.safetensors", protect)  # on every rank, before the collective gathering
    sd = state_dict_cpu(model)  # the whole weights, gathered once for every output below
    if not is_main_process():
        return None
    args = (config, model, sd, metrics, forget_ids_sha256, n_forget, weights_before_sha256, extra, protect)
    if folder is None:
        with RunFolder(out, config, overwrite=overwrite) as opened:
            return _publish(opened, out, args, tokenizer)
    return _publish(folder, out, args, tokenizer)


def _publish(folder: Any, out: Path, args: tuple, tokenizer: Any) -> dict[str, Any]:
    """Write the files into ``folder``'s work folder, publish it as ``out``, then index it."""
    receipt = _write_run_files(folder.work, *args, tokenizer, folder.changes)
    folder.publish_run()
    config, metrics, extra = args[0], args[3], args[7]
    index_run(out, config, metrics, receipt, extra)
    return receipt


def _write_run_files(
    out: Path,
    config: dict[str, Any],
    model: nn.Module,
    sd: dict[str, Any],
    metrics: dict[str, float],
    forget_ids_sha256: str,
    n_forget: int,
    weights_before_sha256: str,
    extra: dict[str, Any] | None,
    protect: list[str | Path] | None,
    tokenizer: Any,
    changes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    save_state_dict(sd, out / "model.safetensors", protect=protect)
    after = state_dict_sha256(sd)
    if hasattr(model, "save_pretrained"):  # a Hugging Face model: also a folder from_pretrained can load
        # the gathered weights (a sharded model's own state dict holds only this rank's shards); a copy of
        # the dict, which transformers empties as it writes
        model.save_pretrained(out / "hf_model", state_dict=dict(sd), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(out / "hf_model")
    results = {"metrics": metrics} | (extra or {})
    receipt = {
        "run_id": uuid.uuid4().hex,
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
    if (extra or {}).get("training"):  # precision, grad_accum, batch size per process and per optimizer step
        receipt["training"] = extra["training"]
    if changes:  # resumed with --resume-with-changes: both configs and the step of each change
        receipt["config_changes"] = changes

    write_text(out / "config.yaml", changes_header(changes or []) + yaml.safe_dump(config, sort_keys=False))
    write_json(out / "results.json", results)
    write_json(out / "receipt.json", receipt)

    write_card(out, config, receipt, metrics, (extra or {}).get("oracle"))
    return receipt
