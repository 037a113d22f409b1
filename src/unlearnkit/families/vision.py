"""The image-classifier family: cross-entropy per example, random relabelling, logits for audits."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unlearnkit.config import call_with_options
from unlearnkit.data.base import LoadedData
from unlearnkit.data.examples import Batch, ExampleSet
from unlearnkit.data.image_processor import with_processor
from unlearnkit.data.splits import (
    SPLIT_OPTIONS,
    Split,
    carve_heldout,
    check_split_options,
    make_split,
    validate_labels,
)
from unlearnkit.errors import ConfigError, DataError
from unlearnkit.families.base import Family
from unlearnkit.models.hf_vision import (
    check_num_labels,
    load_hf_image_classifier,
    load_image_processor,
    num_labels_of,
    read_config,
)
from unlearnkit.registry import get_model, register_family


@register_family("vision")
class VisionFamily(Family):
    """Image classifiers: batches are ``{"x": [B, C, H, W], "y": [B], "id": [B]}``.

    ``relabel_mode``: ``"other"`` draws a label uniformly among the K-1 wrong classes, as SalUn's
    random-labelling objective states (y' ≠ y, Eq. 6 of Fan et al., ICLR 2024); ``"any"`` draws from all
    K classes, as the reference code does (``torch.randint(0, K)``), so y' may equal y.

    BatchNorm: iterative methods (FT, GA, RL/SalUn, ℓ1-sparse, SCRUB, boundary shrink/expand) run in train
    mode, so running statistics follow the batches each method trains on (the forget batches too, for GA),
    exactly as the reference SalUn/Unlearn-Sparse code does (it calls ``model.train()`` before every
    unlearning epoch); a mask covers parameters only, so masked layers still update their running
    statistics, again as in the reference. We keep that behaviour because the papers' numbers come from
    it. Single-shot IU and the saliency map are computed in eval mode, at fixed statistics; frozen copies
    (boundary shrink's f_o, SCRUB's teacher) stay in eval mode.

    Hugging Face image classifiers: ``model.name=hf model.path=FOLDER`` (``models/hf_vision.py``) loads an
    ``AutoModelForImageClassification`` folder; its head must have one logit per class of the data, and
    its image processor is applied to the data's images batch by batch (``model.preprocess``: ``auto``,
    the default, preprocesses raw images and [0, 1] floats and passes other values through; ``false``
    passes everything through; see ``data/image_processor.py``).
    """

    default_dataset = "digits"
    # ``split.heldout``: a validation part of the test set that tune scores on (classifiers only)
    split_kinds = {k: (*v, "heldout") if k != "benchmark" else v for k, v in SPLIT_OPTIONS.items()}

    def make_split(self, data: LoadedData, spec: dict[str, Any], seed: int) -> tuple[Split, LoadedData]:
        """The generic kinds, and with ``split.heldout`` a validation set carved from the test set first:
        ``Split.heldout`` (what tune scores on), the rest being the test set every metric uses."""
        if "heldout" not in spec:
            return super().make_split(data, spec, seed)
        check_split_options(spec, self.split_kinds)
        held, rest = carve_heldout(data.test, spec["heldout"], seed)
        rest_spec = {k: v for k, v in spec.items() if k != "heldout"}
        split = make_split(data.train, rest, rest_spec, seed)
        info = split.info | {"heldout": {"count": len(held), "of": len(data.test)}}
        return replace(split, heldout=held, info=info), data

    # None: methods that need the input range (boundary_shrink's clamp) take it from the data; it used to
    # be a fixed (0, 1), wrong for standardised inputs. A subclass for a known range may set (lo, hi).
    input_range: tuple[float, float] | None = None

    def __init__(self, num_classes: int | None = None, relabel_mode: str = "other") -> None:
        if relabel_mode not in ("other", "any"):
            raise ConfigError(f"relabel_mode must be 'other' or 'any', got {relabel_mode!r}")
        self.num_classes = num_classes
        self.relabel_mode = relabel_mode
        self.hf_folder: str | None = None  # model.path of model.name=hf
        self.preprocess: Any = "auto"
        self.processor: Any = None

    # -- core contract ----------------------------------------------------------------------------
    def logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return model(batch["x"])

    def per_example_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(self.logits(model, batch), batch["y"], reduction="none")

    def relabel(self, batch: Batch, generator: torch.Generator) -> Batch:
        k = self._k()
        y = batch["y"]
        if self.relabel_mode == "other":
            shift = torch.randint(1, k, y.shape, generator=generator).to(y.device)
            new = (y + shift) % k
        else:
            new = torch.randint(0, k, y.shape, generator=generator).to(y.device)
        return batch | {"y": new}

    def _k(self) -> int:
        if not self.num_classes or self.num_classes < 2:
            raise ConfigError("the vision family needs num_classes >= 2 to draw random labels")
        return self.num_classes

    # -- data and models ----------------------------------------------------------------------------
    def protocol(self, data: LoadedData) -> str:
        return "classification"

    def data_spec(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """Remember a Hugging Face model folder (``model.name=hf``): its processor preprocesses the data."""
        model = cfg.get("model") or {}
        self.hf_folder = str(model["path"]) if model.get("name") == "hf" and model.get("path") else None
        self.preprocess = model.get("preprocess", "auto")
        return cfg["data"]

    def load_data(self, spec: dict[str, Any]) -> LoadedData:
        data = super().load_data(spec)
        self.num_classes = data.num_classes
        if self.hf_folder is not None:
            data = self._preprocessed(data, self.hf_folder)
        return data

    def _preprocessed(self, data: LoadedData, folder: str) -> LoadedData:
        """``data`` with the folder's image processor attached (after checking the model's head fits)."""
        cfg = read_config(folder)
        check_num_labels(num_labels_of(cfg), data.num_classes)
        has_processor = (Path(folder).expanduser() / "preprocessor_config.json").is_file()
        if self.preprocess is not False or has_processor:
            self.processor = load_image_processor(folder)
        if self.preprocess is False:
            return data
        channels = int(cfg.get("num_channels", 3))
        where = "model.preprocess"
        train = with_processor(data.train, self.processor, channels, self.preprocess, where)
        test = with_processor(data.test, self.processor, channels, self.preprocess, where)
        shape = tuple(train.__getitems__([0])["x"].shape[1:]) if len(train) else data.input_shape
        return replace(data, train=train, test=test, input_shape=shape)

    def build_model(self, spec: dict[str, Any], data: LoadedData) -> nn.Module:
        spec = dict(spec)
        name = spec.pop("name", "resnet-tiny")
        path = spec.pop("path", None)
        spec.pop("seed", None)
        spec.pop("lora", None)  # applied around unlearning (models/lora.py), not at build time
        if name == "hf":  # a pretrained Hugging Face folder, loaded with its weights
            spec.pop("preprocess", None)
            if not path:
                raise ConfigError("model.name=hf needs model.path=FOLDER (an image classifier's folder)")
            return call_with_options(
                load_hf_image_classifier,
                (path, data.num_classes, self.processor),
                spec,
                "model 'hf' (model.*)",
            )
        if path and Path(path).expanduser().is_dir():
            raise ConfigError(
                f"model.path={path!r} is a folder: for a Hugging Face image classifier set model.name=hf; "
                f"for model {name!r} pass its .safetensors weights file"
            )
        return call_with_options(
            get_model(name), (data.input_shape, data.num_classes), spec, f"model {name!r} (model.*)"
        )

    def validate(self, model: nn.Module, data: ExampleSet) -> None:
        if "x" not in data.columns or "y" not in data.columns:
            raise DataError(f"a classifier dataset needs columns 'x' and 'y', got {sorted(data.columns)}")
        if self.num_classes is not None:
            validate_labels(data, self.num_classes)
        probe = data.__getitems__([0])
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model(probe["x"].to(_device_of(model)))
        except RuntimeError as exc:
            raise DataError(
                f"the model cannot take inputs of shape {tuple(probe['x'].shape[1:])}: {exc}. "
                "Check that the dataset and model.input_shape / in_channels agree"
            ) from exc
        finally:
            model.train(was_training)
        if out.ndim != 2:
            raise DataError(f"a classifier must return logits of shape [B, K], got {tuple(out.shape)}")
        if self.num_classes is None:
            self.num_classes = int(out.shape[1])
        elif out.shape[1] < self.num_classes:
            raise DataError(
                f"the model returns {out.shape[1]} logits but the data has {self.num_classes} classes"
            )

    @torch.no_grad()
    def predict_logits(self, model: nn.Module, data: ExampleSet, batch_size: int = 512) -> torch.Tensor:
        """Logits for every example in ``data`` (eval mode, no gradients), in dataset order."""
        was_training = model.training
        model.eval()
        dev = _device_of(model)
        outs = []
        for batch in data.loader(batch_size):
            outs.append(model(batch["x"].to(dev)).float().cpu())
        model.train(was_training)
        return torch.cat(outs) if outs else torch.empty(0, self.num_classes or 0)


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")
