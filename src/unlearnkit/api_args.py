"""The Python API's arguments, checked the way an API user reads errors: ``ValueError``/``TypeError``
naming the argument (``forget=``, ``num_classes=``, ``train=``, ``out=``), never a config key.

Shared by :mod:`unlearnkit.api` and :mod:`unlearnkit.calibration`."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unlearnkit.config import build_dataclass, load_preset
from unlearnkit.data.image_processor import with_processor
from unlearnkit.data.splits import Split
from unlearnkit.data.user import check_label_range, identical_rows
from unlearnkit.data.user_split import user_split
from unlearnkit.engine.loop import EngineConfig
from unlearnkit.engine.optim import OptimSpec
from unlearnkit.errors import ArgumentError, ArgumentTypeError, ConfigError, DataError, did_you_mean
from unlearnkit.experiment.config import SUITE_KEYS
from unlearnkit.methods.retrain import RECIPE_KEYS
from unlearnkit.models.hf_vision import HFImageClassifier, is_image_classifier
from unlearnkit.registry import list_names

API_FAMILIES = ("vision",)  # unlearn() and evaluate() take (x, y) data; other families: run_config()
RUN_FILES = ("receipt.json", "results.json", "model.safetensors")


def probe_classes(model: nn.Module, split: Split, num_classes: int | None) -> int:
    """K from the model's output on one forget example (shape taken from the data, never assumed)."""
    x = split.forget.__getitems__([0])["x"]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x.to(device_of(model)))
    except (RuntimeError, ValueError) as exc:
        msg = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ArgumentError(
            f"model= cannot take the inputs of forget= (one example has shape {tuple(x.shape[1:])}): {msg}; "
            "pass inputs shaped as the model expects"
        ) from exc
    finally:
        model.train(was_training)
    if out.ndim != 2:
        raise ArgumentError(f"model= must return logits of shape [batch, classes], got {tuple(out.shape)}")
    k = int(out.shape[1])
    if num_classes is None:
        return k
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 2 <= num_classes <= k:
        raise ArgumentError(
            f"num_classes= must be an int in 2..{k} (model= returns {k} logits), got {num_classes!r}"
        )
    return num_classes


def adapt_model(model: nn.Module, image_processor: Any = None) -> tuple[nn.Module, Callable | None]:
    """(the module to run, the preprocessing of a split or None). A Hugging Face ``*ForImageClassification``
    model is wrapped so that it returns logits (``models/hf_vision.py``); with ``image_processor=`` (e.g.
    ``AutoImageProcessor.from_pretrained(folder)``) the images of every set are preprocessed by it batch by
    batch (raw uint8 / 0..255 images and [0, 1] floats; other values are taken as preprocessed
    ``pixel_values``); without it the data go to the model as given."""
    if is_image_classifier(model):
        model = HFImageClassifier(model, image_processor)
    if image_processor is None:
        return model, None
    if not callable(image_processor):
        raise ArgumentTypeError(
            "image_processor= must be an image processor (AutoImageProcessor), got "
            f"{type(image_processor).__name__}"
        )
    channels = model.num_channels if isinstance(model, HFImageClassifier) else 3

    def prepare(split: Split) -> Split:
        def pre(s):
            return (
                None if s is None else with_processor(s, image_processor, channels, "auto", "image_processor")
            )

        try:
            return replace(
                split,
                forget=pre(split.forget),
                retain=pre(split.retain),
                test=pre(split.test),
                test_forgotten=pre(split.test_forgotten),
            )
        except DataError as exc:
            raise ArgumentError(f"image_processor=: {exc}") from exc

    return model, prepare


def checked_split(
    model, forget, retain, test, train_set, forget_class, num_classes, prepare=None, test_arg="test"
) -> tuple[Split, int]:
    """The split of an API call and K; ``test_arg`` names the argument that gave the test set."""
    split = user_split(forget, retain, test, train_set, forget_class, test_arg)
    if test_arg != "test":
        _never_trained_on(split, test_arg, "train_set" if train_set is not None else None)
    if prepare is not None:
        split = prepare(split)
    k = probe_classes(model, split, num_classes)
    where = f"num_classes={k}" if num_classes is not None else f"model= returns {k} logits"
    src = "train_set" if train_set is not None else None
    sets = [(src or "forget", split.forget), (src or "retain", split.retain), (test_arg, split.test)]
    if split.test_forgotten is not None:
        sets.append((test_arg, split.test_forgotten))
    for arg, s in sets:
        check_label_range(s.labels, k, arg, where)
    if forget_class is not None and not 0 <= forget_class < k:
        raise ArgumentError(f"forget_class={forget_class} is not a class of the model (0..{k - 1})")
    return split, k


def tuning_split(
    model, forget, retain, test, heldout, train_set, forget_class, num_classes, prepare=None
) -> tuple[Split, int]:
    """The split ``tune`` scores and K: the test set, or ``heldout=`` in its place (a validation set the
    model never trained on, kept apart from the test set so that the TA and MIA reported afterwards come
    from examples the calibration never looked at)."""
    if heldout is None:
        return checked_split(model, forget, retain, test, train_set, forget_class, num_classes, prepare)
    return checked_split(
        model, forget, retain, heldout, train_set, forget_class, num_classes, prepare, "heldout"
    )


def _never_trained_on(split: Split, arg: str, src: str | None) -> None:
    """Held-out examples must be unseen: refuse ``arg``'s examples that equal a training example (the same
    input bytes and label) of the forget or retain set."""
    held = [split.test] + ([split.test_forgotten] if split.test_forgotten is not None else [])
    for name, s in ((src or "forget", split.forget), (src or "retain", split.retain)):
        for h in held:
            if "x" not in h.columns or h.columns["x"].shape[1:] != s.columns["x"].shape[1:] or not len(h):
                continue
            same = identical_rows(h, s)
            if same:
                j = int(s.ids[same[0][1]]) if src else same[0][1]  # train_set=: the ids are its rows
                raise ArgumentError(
                    f"{arg}= shares {len(same)} example(s) with {name}= (the same input and label, e.g. "
                    f"{name}[{j}]): held-out examples must be ones the model never trained on; "
                    f"remove them from {arg}="
                )


def method_spec(method, preset, options, method_options) -> tuple[dict[str, Any], dict[str, Any]]:
    """(method section, engine defaults) from ``preset=`` overlaid with ``method=``/``options``/kwargs."""
    spec: dict[str, Any] = {}
    engine: dict[str, Any] = {}
    if preset is not None:
        try:
            cfg = load_preset(preset)
        except ConfigError as exc:
            raise ArgumentError(f"preset=: {exc}") from exc
        suite_keys = [k for k in SUITE_KEYS if k in cfg]
        if suite_keys:  # its methods: would be ignored, and the run would be SalUn's
            raise ArgumentError(
                f"preset={preset!r} is a suite (it has {suite_keys[0]!r}): pass one method's preset, "
                "e.g. preset='vision/ga', or run the suite with unlearnkit.bench.run_suite"
            )
        if cfg.get("family", "vision") not in API_FAMILIES:
            raise ArgumentError(
                f"preset={preset!r} is for the {cfg['family']!r} family; unlearn() runs {API_FAMILIES}"
            )
        spec = dict(cfg.get("method") or {})
        if "batch_size" in (cfg.get("engine") or {}):
            engine["batch_size"] = cfg["engine"]["batch_size"]
        if method is not None and spec.get("name") not in (None, method):
            raise ArgumentError(
                f"method={method!r} differs from preset={preset!r}'s {spec['name']!r}; pass one"
            )
    spec = spec | {"name": method or spec.get("name") or "salun"} | (options or {}) | method_options
    names = list_names("method")
    if not isinstance(spec["name"], str) or spec["name"] not in names:  # the registry's error is a CLI one
        raise ArgumentError(f"unknown method={spec['name']!r}: {did_you_mean(str(spec['name']), names)}")
    return spec, engine


def engine_config(values: dict[str, Any]) -> EngineConfig:
    """The engine settings of an API call, errors naming ``engine=``'s keys (``engine['batch_size']``)."""
    try:
        return build_dataclass(EngineConfig, values, "engine")
    except ConfigError as exc:
        raise ArgumentError(re.sub(r"engine\.(\w+)", r"engine['\1']", str(exc))) from exc


def check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ArgumentError(f"seed= must be an int in 0..{2**32 - 1}, got {seed!r}")


def recipe(m: Any, spec: dict[str, Any], train: Any) -> tuple[OptimSpec | None, dict[str, Any]]:
    """The original model's recipe (``train=``) and, for retrain, which recipe it will use and why."""
    ts = None
    if train is not None:
        if isinstance(train, OptimSpec):
            ts = train
        elif isinstance(train, dict):
            try:
                ts = build_dataclass(OptimSpec, train, "train")
                ts.check()
            except ConfigError as exc:
                raise ArgumentError(f"train=: {exc}") from exc
        else:
            raise ArgumentTypeError(
                f"train= must be a dict of the original's recipe (epochs, lr, ...), got {train!r:.60}"
            )
    if spec["name"] != "retrain":
        return ts, {}
    if ts is not None and m.cfg.use_train_recipe:
        source = "train="
    elif any(k in spec for k in RECIPE_KEYS):
        source = "method options"
    else:
        source = "default"
        warnings.warn(
            "method='retrain' without train=: retraining with the default recipe (SGD lr 0.1, momentum 0.9, "
            f"wd 5e-4, cosine, {m.cfg.epochs} epochs: SalUn's CIFAR-10 recipe); pass train={{'epochs': ..., "
            "'lr': ...}} with the recipe that trained your model",
            UserWarning,
            stacklevel=3,
        )
    return ts, {"recipe_source": source}


def check_out(out: str | Path | None, overwrite: bool) -> None:
    if out is None:
        return
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ArgumentError(f"out={str(out)!r} is a file: pass a folder for the run")
    if not overwrite and p.is_dir() and any((p / n).exists() for n in RUN_FILES):
        raise ArgumentError(
            f"out={str(out)!r} already holds a run: pass overwrite=True to replace it, or another folder"
        )


def device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")
