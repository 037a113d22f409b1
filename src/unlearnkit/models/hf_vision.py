"""Hugging Face image classifiers (``AutoModelForImageClassification``: ViT, ResNet, ConvNeXt, ...) as
vision-family models.

A model folder written by ``save_pretrained`` (``config.json`` whose ``architectures`` end in
``ForImageClassification``, safetensors weights, ``preprocessor_config.json``) is loaded offline
(``local_files_only=True``) and wrapped in :class:`HFImageClassifier`, a thin module whose ``forward(x)``
returns the logits for ``x`` = the processor's ``pixel_values``; the vision family then trains and
evaluates it exactly like our own models. ``save_pretrained`` writes it back as a folder the same
``from_pretrained`` loads (safetensors, its config with ``id2label``, and its image processor).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unlearnkit.errors import ConfigError

PREFIX = "model."  # the wrapped model's keys inside the wrapper's state dict
CONVERT = (
    "load it once where you trust the file and write it back with "
    "model.save_pretrained(folder, safe_serialization=True)"
)


class HFImageClassifier(nn.Module):
    """A ``*ForImageClassification`` model as a classifier: ``forward(pixel_values) -> logits``.

    ``processor`` (the folder's image processor, or the one passed to the API) is kept so that the
    written folder carries it beside the weights."""

    def __init__(self, model: nn.Module, processor: Any = None) -> None:
        super().__init__()
        self.model = model
        self.processor = processor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits

    @property
    def num_labels(self) -> int:
        return int(self.model.config.num_labels)

    @property
    def num_channels(self) -> int:
        return int(getattr(self.model.config, "num_channels", 3))

    def save_pretrained(self, folder: str | Path, state_dict: dict[str, Any] | None = None, **kwargs: Any):
        """Write the wrapped model (and its image processor) as a Hugging Face folder, safetensors only.

        ``state_dict``: the wrapper's (gathered) state dict, as the run writer passes it; its keys lose the
        wrapper's prefix."""
        kwargs["safe_serialization"] = True
        if state_dict is not None:
            state_dict = {k.removeprefix(PREFIX): v for k, v in state_dict.items()}
        self.model.save_pretrained(folder, state_dict=state_dict, **kwargs)
        if self.processor is not None:
            self.processor.save_pretrained(folder)


def is_image_classifier(model: Any) -> bool:
    """Whether ``model`` is a transformers ``*ForImageClassification`` model (duck-typed: no import)."""
    archs = getattr(getattr(model, "config", None), "architectures", None) or []
    name = type(model).__name__
    return (
        isinstance(model, nn.Module)
        and hasattr(model, "save_pretrained")
        and (
            name.endswith("ForImageClassification")
            or any(str(a).endswith("ForImageClassification") for a in archs)
        )
    )


def read_config(path: str | Path, where: str = "model.path") -> dict[str, Any]:
    """The folder's ``config.json``, checked to be an image classifier's (one-line ConfigErrors)."""
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"{where}={str(path)!r} is not a Hugging Face model folder (no config.json there); pass a folder "
            "written by save_pretrained"
        )
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}={str(path)!r}: config.json is not valid JSON ({exc})") from None
    archs = cfg.get("architectures") or []
    if not any(str(a).endswith("ForImageClassification") for a in archs):
        raise ConfigError(
            f"{where}={str(path)!r} holds {archs or cfg.get('model_type', 'an unknown model')}, not an image "
            "classifier (architectures ending in ForImageClassification): the vision family loads "
            "AutoModelForImageClassification folders"
        )
    if not any(folder.glob("*.safetensors")):
        pickled = sorted(p.name for p in folder.glob("*.bin"))
        hint = f" (it holds pickled {', '.join(pickled)}: {CONVERT})" if pickled else ""
        raise ConfigError(f"{where}={str(path)!r} has no .safetensors weights{hint}")
    return cfg


def num_labels_of(cfg: dict[str, Any]) -> int:
    if "num_labels" in cfg:
        return int(cfg["num_labels"])
    return len(cfg.get("id2label") or {}) or 2  # transformers' default


def check_num_labels(have: int, want: int, where: str = "model.path") -> None:
    """The head must have one logit per class of the data: one line saying how to fix it otherwise."""
    if have != want:
        raise ConfigError(
            f"{where} has {have} labels (config num_labels / id2label) but the data has {want} classes: "
            f"give the model a {want}-class head and fine-tune it first (AutoModelForImageClassification."
            f"from_pretrained(folder, num_labels={want}, ignore_mismatched_sizes=True, id2label=...)), or "
            "use data labelled with the model's classes"
        )


def load_image_processor(path: str | Path, where: str = "model.path") -> Any:
    """The folder's image processor (``AutoImageProcessor``, offline)."""
    from transformers import AutoImageProcessor

    folder = Path(path).expanduser()
    if not (folder / "preprocessor_config.json").is_file():
        raise ConfigError(
            f"{where}={str(path)!r} has no preprocessor_config.json: save the model's image processor into "
            "the folder (processor.save_pretrained(folder)), or set model.preprocess=false and give "
            "already-preprocessed pixel_values"
        )
    return AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)


def load_hf_image_classifier(
    path: str | Path, num_classes: int | None = None, processor: Any = None
) -> HFImageClassifier:
    """The image classifier in folder ``path`` (offline), its head checked against ``num_classes``."""
    from transformers import AutoModelForImageClassification

    cfg = read_config(path)
    if num_classes is not None:
        check_num_labels(num_labels_of(cfg), num_classes)
    try:
        model = AutoModelForImageClassification.from_pretrained(
            str(Path(path).expanduser()), local_files_only=True, use_safetensors=True
        )
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"could not load the image classifier {str(path)!r}: {first}") from exc
    return HFImageClassifier(model, processor)
