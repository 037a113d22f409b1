"""The Python API: ``unlearn``, ``evaluate`` and ``run_config``.

``unlearn`` accepts a user's own ``torch.nn.Module`` and data (tensors, numpy arrays, lists, torch and
Hugging Face datasets, ExampleSets; see ``data/user.py``); the input model is never modified: methods work
on a copy. Bad input raises ``ValueError``/``TypeError`` (``errors.ArgumentError``) naming the argument.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unlearnkit.config import build_dataclass, load_preset
from unlearnkit.data.splits import Split
from unlearnkit.data.user import check_label_range
from unlearnkit.data.user_split import user_split
from unlearnkit.engine.loop import Engine, EngineConfig
from unlearnkit.engine.optim import OptimSpec
from unlearnkit.errors import ArgumentError, ArgumentTypeError, ConfigError, UnlearnkitError
from unlearnkit.io import weights_sha256
from unlearnkit.metrics.vision import evaluate_classifier


@dataclass
class UnlearnResult:
    model: nn.Module
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    run_dir: Path | None = None
    receipt: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # e.g. which recipe retrain used


RECIPE_KEYS = (
    "epochs",
    "lr",
    "optimizer",
    "momentum",
    "weight_decay",
    "scheduler",
    "milestones",
    "max_grad_norm",
)
RUN_FILES = ("receipt.json", "results.json", "model.safetensors")


def _probe(model: nn.Module, split: Split, num_classes: int | None) -> int:
    """K from the model's output on one forget example (shape taken from the data, never assumed)."""
    x = split.forget.__getitems__([0])["x"]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x.to(_device_of(model)))
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


def _checked_split(model, forget, retain, test, train_set, forget_class, num_classes) -> tuple[Split, int]:
    split = user_split(forget, retain, test, train_set, forget_class)
    k = _probe(model, split, num_classes)
    where = f"num_classes={k}" if num_classes is not None else f"model= returns {k} logits"
    src = "train_set" if train_set is not None else None
    sets = [(src or "forget", split.forget), (src or "retain", split.retain), ("test", split.test)]
    if split.test_forgotten is not None:
        sets.append(("test", split.test_forgotten))
    for arg, s in sets:
        check_label_range(s.labels, k, arg, where)
    if forget_class is not None and not 0 <= forget_class < k:
        raise ArgumentError(f"forget_class={forget_class} is not a class of the model (0..{k - 1})")
    return split, k


def _method_spec(method, preset, options, method_options) -> tuple[dict[str, Any], dict[str, Any]]:
    """(method section, engine defaults) from ``preset=`` overlaid with ``method=``/``options``/kwargs."""
    spec: dict[str, Any] = {}
    engine: dict[str, Any] = {}
    if preset is not None:
        try:
            cfg = load_preset(preset)
        except ConfigError as exc:
            raise ArgumentError(f"preset=: {exc}") from exc
        if cfg.get("family", "vision") != "vision":
            raise ArgumentError(
                f"preset={preset!r} is for the {cfg['family']!r} family; the API runs 'vision'"
            )
        spec = dict(cfg.get("method") or {})
        if "batch_size" in (cfg.get("engine") or {}):
            engine["batch_size"] = cfg["engine"]["batch_size"]
        if method is not None and spec.get("name") not in (None, method):
            raise ArgumentError(
                f"method={method!r} differs from preset={preset!r}'s {spec['name']!r}; pass one"
            )
    spec = spec | {"name": method or spec.get("name") or "salun"} | (options or {}) | method_options
    return spec, engine


def _recipe(m: Any, spec: dict[str, Any], train: Any) -> tuple[OptimSpec | None, dict[str, Any]]:
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


def _check_out(out: str | Path | None, overwrite: bool) -> None:
    if out is None:
        return
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ArgumentError(f"out={str(out)!r} is a file: pass a folder for the run")
    if not overwrite and p.is_dir() and any((p / n).exists() for n in RUN_FILES):
        raise ArgumentError(
            f"out={str(out)!r} already holds a run: pass overwrite=True to replace it, or another folder"
        )


def unlearn(
    model: nn.Module,
    method: str | None = None,
    forget: Any = None,
    retain: Any = None,
    test: Any = None,
    family: str = "vision",
    num_classes: int | None = None,
    options: dict[str, Any] | None = None,
    engine: dict[str, Any] | None = None,
    seed: int = 0,
    evaluate: bool = True,
    out: str | Path | None = None,
    *,
    train_set: Any = None,
    forget_class: int | None = None,
    preset: str | None = None,
    train: dict[str, Any] | OptimSpec | None = None,
    overwrite: bool = False,
    tune: bool = False,
    **method_options: Any,
) -> UnlearnResult:
    """Unlearn ``forget`` from a copy of ``model`` with ``method``; returns the new model and its metrics.

    Data (``forget``/``retain``/``test``/``train_set``): see ``data/user.py`` for the accepted types and
    ``data/user_split.py`` for the three ways to say what to forget (data, indices into ``train_set``,
    ``forget_class``). ``method`` defaults to the preset's method, else ``"salun"``; ``preset`` (e.g.
    ``"vision/salun"``) gives the method's options and batch size, which ``options`` and keyword arguments
    (``lr=0.01, epochs=5``) override. ``train`` is the recipe that trained ``model`` (OptimSpec fields:
    epochs, lr, optimizer, momentum, weight_decay, scheduler, milestones); ``method="retrain"`` retrains
    with it, and ``result.info`` says which recipe it used. ``out`` is refused when it already holds a run,
    unless ``overwrite=True``. ``tune=True`` first calibrates the step size and epochs without an oracle
    (``unlearnkit.tune``, ≤ 10 short trials) and runs with the chosen options (``result.info["tune"]``).
    Bad input raises ValueError/TypeError naming the argument.
    """
    from unlearnkit.families.vision import VisionFamily
    from unlearnkit.methods.base import Task
    from unlearnkit.pipeline import build_method

    if family != "vision":
        raise ArgumentError(f"the API does not support family={family!r} yet; use 'vision'")
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"model= must be a torch.nn.Module, got {type(model).__name__}")
    _check_out(out, overwrite)
    spec, eng = _method_spec(method, preset, options, method_options)
    try:
        m = build_method(spec, family)
    except ConfigError as exc:
        raise ArgumentError(str(exc)) from exc
    train_spec, info = _recipe(m, spec, train)
    work = copy.deepcopy(model)
    split, k = _checked_split(work, forget, retain, test, train_set, forget_class, num_classes)
    if tune:
        from unlearnkit.calibration import tune_split

        tuned = tune_split(model, spec, split, k, eng | (engine or {}), seed)
        spec = spec | tuned.best
        m = build_method(spec, family)
        info["tune"] = {"best": tuned.best, "protocol": tuned.protocol, "trials": len(tuned.trials)}
    fam = VisionFamily(num_classes=k)
    ecfg = build_dataclass(
        EngineConfig, {"progress": False} | eng | (engine or {}) | {"seed": seed}, "engine"
    )
    before = weights_sha256(work)
    task = Task(fam, work, split, Engine(ecfg, out), seed, train_spec=train_spec)
    t0 = time.perf_counter()
    fit = m.run(task)
    seconds = time.perf_counter() - t0
    if spec["name"] == "retrain":
        info["recipe"] = {k_: getattr(m.cfg, k_) for k_ in RECIPE_KEYS}
    metrics = evaluate_classifier(task.model, split, fam) | {"RTE": seconds} if evaluate else {}
    res = UnlearnResult(
        task.model, metrics, seconds, Path(out) if out else None, history=fit.history, info=info
    )
    if out is not None:
        from unlearnkit.runs.record import write_run

        cfg = {"family": family, "seed": seed, "method": spec}
        if preset is not None:
            cfg["preset"] = preset
        if train_spec is not None:
            cfg["train"] = {k_: getattr(train_spec, k_) for k_ in RECIPE_KEYS}
        if forget_class is not None:
            cfg["split"] = {"kind": "class", "classes": [forget_class]}
        res.receipt = (  # rank 0 writes; the other ranks get no receipt
            write_run(
                out, cfg, task.model, metrics, split.forget_ids_sha256(), len(split.forget), before, info
            )
            or {}
        )
    return res


def evaluate_fn(
    model: nn.Module,
    forget: Any = None,
    retain: Any = None,
    test: Any = None,
    family: str = "vision",
    num_classes: int | None = None,
    mia_features: tuple[str, ...] = ("confidence",),
    oracle: dict[str, float] | None = None,
    *,
    train_set: Any = None,
    forget_class: int | None = None,
) -> dict[str, float]:
    """UA, RA, TA and MIA-Efficacy (percent) of ``model``; with ``oracle`` metrics (the retrained model's
    UA, RA, TA, MIA, e.g. from ``evaluate(retrained, ...)``), also ``gap``, the Avg. Gap. With
    ``forget_class``, TA leaves the class out and ``TA_forgotten`` is the class's own test accuracy."""
    from unlearnkit.families.vision import VisionFamily
    from unlearnkit.metrics.vision import GAP_KEYS, avg_gap

    if family != "vision":
        raise ArgumentError(f"evaluate() does not support family={family!r} yet; use 'vision'")
    if oracle is not None:
        if not isinstance(oracle, Mapping):
            raise ArgumentTypeError(
                f"oracle= must be a dict of the retrained model's metrics, got {oracle!r:.60}"
            )
        missing = [k for k in GAP_KEYS if k not in oracle]
        if missing:
            raise ArgumentError(
                f"oracle= is missing {', '.join(missing)}: pass the retrained model's UA, RA, TA and MIA, "
                "e.g. oracle=unlearnkit.evaluate(retrained_model, forget=..., retain=..., test=...)"
            )
    split, k = _checked_split(model, forget, retain, test, train_set, forget_class, num_classes)
    out = evaluate_classifier(model, split, VisionFamily(num_classes=k), mia_features)
    if oracle is not None:
        out["gap"] = avg_gap(out, oracle)
    return out


evaluate = evaluate_fn


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _overlaps_input(out: Path, model_path: Path) -> bool:
    """True when writing into ``out`` could touch the input model (its file, its folder, or inside it)."""
    out, mp = out.resolve(), model_path.resolve()
    home = mp if mp.is_dir() else mp.parent
    return out == home or home in out.parents


def run_config(cfg: dict[str, Any], out: str | Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Run one unlearning job from a config dict (what ``unlearnkit unlearn`` does).

    ``resume`` continues a killed job from its last checkpoint in ``out`` (and a killed training of the
    original from the cache); the final weights and metrics equal an uninterrupted run's (RTE aside).
    Under several processes only the main process writes ``out``."""
    from unlearnkit.pipeline import (
        build_method,
        evaluate_model,
        make_setup,
        oracle_model,
        original_model,
        resolve,
        run_method,
    )

    cfg = resolve(cfg)
    method = build_method(cfg["method"], cfg["family"])  # validate before any work
    out = out or cfg.get("out")
    protect = [cfg["model"]["path"]] if cfg["model"].get("path") else []
    if out and protect and _overlaps_input(Path(out), Path(protect[0])):
        raise UnlearnkitError(
            f"--out {str(out)!r} is the folder of the input model; choose another folder so the input is kept"
        )
    if resume and not out:
        raise ConfigError("--resume needs the --out folder of the run to continue")
    setup = make_setup(cfg)
    original, meta = original_model(setup, resume=resume)
    before = weights_sha256(original)
    model, seconds, fit = run_method(setup, original, method, Path(out) if out else None, resume=resume)
    result: dict[str, Any] = {"original": meta}
    oracle = None
    if cfg["eval"].get("oracle"):
        oracle_m, oracle_s = oracle_model(setup, build_method({"name": "retrain"}, cfg["family"]), original)
        oracle = evaluate_model(setup, oracle_m, "self") | {"RTE": oracle_s}
        result["oracle"] = {k: v for k, v in oracle.items() if not k.startswith("_")}
    metrics = {k: v for k, v in evaluate_model(setup, model, oracle).items() if not k.startswith("_")}
    metrics["RTE"] = seconds
    result["metrics"] = metrics
    if out:  # every rank: a sharded model is gathered collectively; rank 0 alone writes
        from unlearnkit.runs.record import write_run

        result["receipt"] = write_run(
            out,
            cfg,
            model,
            metrics,
            setup.split.forget_ids_sha256(),
            len(setup.split.forget),
            before,
            extra={"oracle": result.get("oracle"), "steps": fit.steps},
            protect=protect,
            tokenizer=setup.data.meta.get("tokenizer"),
        )
    return result
