"""The Python API: ``unlearn``, ``evaluate`` and ``run_config``.

``unlearn`` accepts a user's own ``torch.nn.Module`` and data (tensors, numpy arrays, lists, torch and
Hugging Face datasets, ExampleSets; see ``data/user.py``); the input model is never modified: methods work
on a copy. Bad input raises ``ValueError``/``TypeError`` (``errors.ArgumentError``) naming the argument.
"""

from __future__ import annotations

import contextlib
import copy
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from unlearnkit.api_args import (
    API_FAMILIES,
    RECIPE_KEYS,
    adapt_model,
    check_out,
    check_seed,
    checked_split,
    engine_config,
    method_spec,
    recipe,
    tuning_split,
)
from unlearnkit.calibration import write_tune_files
from unlearnkit.data.splits import Split
from unlearnkit.engine.devices import require_device
from unlearnkit.engine.loop import Engine, EngineConfig, is_main_process
from unlearnkit.engine.optim import OptimSpec
from unlearnkit.errors import ArgumentError, ArgumentTypeError, ConfigError, UnlearnkitError, api_phrased
from unlearnkit.experiment import (
    attack_metrics,
    build_method,
    evaluate_model,
    export_oracle,
    make_setup,
    original_model,
    resolve,
    resolve_oracle,
    run_method,
    wants_oracle,
)
from unlearnkit.experiment.oracle_source import STATS_FILE, parse_section
from unlearnkit.families.base import Task
from unlearnkit.families.vision import VisionFamily
from unlearnkit.io import weights_sha256, write_json
from unlearnkit.metrics.vision import GAP_KEYS, avg_gap, evaluate_classifier
from unlearnkit.protocols.base import public
from unlearnkit.runs.folder import RunFolder
from unlearnkit.runs.record import write_run
from unlearnkit.tuning import ON_TEST, TuneResult, tune_split


@dataclass
class UnlearnResult:
    model: nn.Module
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    run_dir: Path | None = None
    receipt: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # e.g. which recipe retrain used


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
    heldout: Any = None,
    image_processor: Any = None,
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
    (``unlearnkit.tune``, ≤ 10 short runs, scored after each epoch where the method allows) and runs with
    the chosen options (``result.info["tune"]``), scored against ``test=`` or, with ``heldout=``, against
    that validation set instead, so that the reported TA and MIA use examples the calibration never saw
    (without it, a ``UserWarning`` says that they do not).
    A Hugging Face ``*ForImageClassification`` model is unlearned through its logits and returned as such
    (``out=`` also gets ``hf_model/``, a ``save_pretrained`` folder); ``image_processor=`` preprocesses
    raw images for it (see :func:`unlearnkit.api_args.adapt_model`).
    Bad input raises ValueError/TypeError naming the argument.
    """
    if family not in API_FAMILIES:
        raise ArgumentError(f"the API does not support family={family!r} yet; use 'vision'")
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"model= must be a torch.nn.Module, got {type(model).__name__}")
    check_out(out, overwrite)
    check_seed(seed)
    if heldout is not None and not tune:
        raise ArgumentError("heldout= is what tune scores against: pass tune=True, or leave heldout= out")
    spec, eng = method_spec(method, preset, options, method_options)
    ecfg = engine_config({"progress": False} | eng | (engine or {}) | {"seed": seed})  # before any work
    try:
        m = build_method(spec, family)
    except ConfigError as exc:
        raise ArgumentError(api_phrased(str(exc))) from exc
    train_spec, info = recipe(m, spec, train)
    base, prepare = adapt_model(model, image_processor)  # a Hugging Face classifier: wrapped for logits
    work = copy.deepcopy(base)
    split, k = checked_split(work, forget, retain, test, train_set, forget_class, num_classes, prepare)
    tuned = None
    if tune:
        scored, on = split, "test"
        if heldout is None:
            fix = "pass heldout= (a validation set) to keep them apart"
            warnings.warn(ON_TEST.format(fix=fix), UserWarning, stacklevel=2)
        else:
            args = (forget, retain, None, heldout, train_set, forget_class, num_classes, prepare)
            scored, on = tuning_split(work, *args)[0], "heldout"
        tuned = tune_split(base, spec, scored, k, eng | (engine or {}), seed, scored_on=on)
        spec = spec | tuned.best
        m = build_method(spec, family)
        info["tune"] = {
            "best": tuned.best,
            "protocol": tuned.protocol,
            "trials": len(tuned.trials),
            "runs": tuned.runs,
            "targets": tuned.targets,
            "scored_on": tuned.scored_on,
        }
    fam = VisionFamily(num_classes=k)
    require_device(ecfg.device)
    cfg = {"family": family, "seed": seed, "method": spec}
    if preset is not None:
        cfg["preset"] = preset
    if train_spec is not None:
        cfg["train"] = {k_: getattr(train_spec, k_) for k_ in RECIPE_KEYS}
    if forget_class is not None:
        cfg["split"] = {"kind": "class", "classes": [forget_class]}
    job = _Job(m, fam, work, split, ecfg, seed, train_spec, evaluate, cfg, info, tuned)
    if out is None:
        return _unwrapped(job.run(None, None), base is not model)
    with RunFolder(out, cfg, overwrite=overwrite) as folder:
        return _unwrapped(job.run(Path(out), folder), base is not model)


def _unwrapped(res: UnlearnResult, wrapped: bool) -> UnlearnResult:
    """A Hugging Face model comes back as the user gave it: the unlearned ``PreTrainedModel`` itself."""
    if wrapped:
        res.model = res.model.model
    return res


@dataclass
class _Job:
    """One API unlearning run, validated: run it (into a staged run folder, when ``out`` is given)."""

    method: Any
    family: Any
    model: nn.Module
    split: Split
    ecfg: EngineConfig
    seed: int
    train_spec: OptimSpec | None
    evaluate: bool
    cfg: dict[str, Any]
    info: dict[str, Any]
    tuned: TuneResult | None = None  # tune=True: the calibration, published with the run

    def run(self, out: Path | None, folder: Any) -> UnlearnResult:
        before = weights_sha256(self.model)
        engine = Engine(self.ecfg, folder.work if folder else None)
        task = Task(self.family, self.model, self.split, engine, self.seed, train_spec=self.train_spec)
        t0 = time.perf_counter()
        fit = self.method.run(task)
        seconds = time.perf_counter() - t0
        info = self.info
        if self.cfg["method"]["name"] == "retrain":
            info["recipe"] = {k_: getattr(self.method.cfg, k_) for k_ in RECIPE_KEYS}
        metrics = (
            evaluate_classifier(task.model, self.split, self.family) | {"RTE": seconds}
            if self.evaluate
            else {}
        )
        res = UnlearnResult(task.model, metrics, seconds, out, history=fit.history, info=info)
        if out is not None:
            if self.tuned is not None and is_main_process():  # how the options were chosen, beside the run
                write_tune_files(folder.work, self.tuned, self.cfg)
            ids_sha, n = self.split.forget_ids_sha256(), len(self.split.forget)
            # rank 0 writes; the other ranks get no receipt
            extra = info | {"training": fit.training}
            res.receipt = write_run(
                out, self.cfg, task.model, metrics, ids_sha, n, before, extra, folder=folder
            )
            res.receipt = res.receipt or {}
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
    image_processor: Any = None,
) -> dict[str, float]:
    """UA, RA, TA and MIA-Efficacy (percent) of ``model``; with ``oracle`` metrics (the retrained model's
    UA, RA, TA, MIA, e.g. from ``evaluate(retrained, ...)``), also ``gap``, the Avg. Gap. With
    ``forget_class``, TA leaves the class out and ``TA_forgotten`` is the class's own test accuracy."""
    if family not in API_FAMILIES:
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
    model, prepare = adapt_model(model, image_processor)
    split, k = checked_split(model, forget, retain, test, train_set, forget_class, num_classes, prepare)
    out = evaluate_classifier(model, split, VisionFamily(num_classes=k), mia_features)
    if oracle is not None:
        out["gap"] = avg_gap(out, oracle)
    return out


evaluate = evaluate_fn


def _overlaps_input(out: Path, model_path: Path) -> bool:
    """True when writing into ``out`` could touch the input model (its file, its folder, or inside it)."""
    out, mp = out.resolve(), model_path.resolve()
    home = mp if mp.is_dir() else mp.parent
    return out == home or home in out.parents


def run_config(
    cfg: dict[str, Any],
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    resume_with_changes: bool = False,
    tuned: TuneResult | None = None,
) -> dict[str, Any]:
    """Run one unlearning job from a config dict (what ``unlearnkit unlearn`` does).

    ``resume`` continues a killed job from its last checkpoint in ``out`` (and a killed training of the
    original from the cache); the final weights and metrics equal an uninterrupted run's (RTE aside). The
    config must equal the run's saved one unless ``resume_with_changes`` (then both are recorded). An ``out``
    that holds another run is refused unless ``overwrite`` or a resume (``runs/folder.py``).
    Under several processes only the main process writes ``out``. ``tuned`` (``unlearn --tune``): the
    calibration that chose the method's options, published with the run (``tune.json``, ``.md``, ``.png``)."""

    cfg = resolve(cfg)
    require_device(cfg["engine"].get("device", "auto"))
    method = build_method(cfg["method"], cfg["family"])  # validate before any work
    out = out or cfg.get("out")
    resume = resume or resume_with_changes
    protect = [cfg["model"]["path"]] if cfg["model"].get("path") else []
    if out and protect and _overlaps_input(Path(out), Path(protect[0])):
        raise UnlearnkitError(
            f"--out {str(out)!r} is the folder of the input model; choose another folder so the input is kept"
        )
    oracle_input = parse_section(cfg.get("oracle")).describe()["path"]
    if out and oracle_input and _overlaps_input(Path(out), Path(oracle_input)):
        raise UnlearnkitError(
            f"--out {str(out)!r} holds the oracle's input {oracle_input!r}; choose another folder so it is "
            "kept"
        )
    if resume and not out:
        raise ConfigError("--resume needs the --out folder of the run to continue")
    folder = RunFolder(out, cfg, overwrite, resume, resume_with_changes) if out else contextlib.nullcontext()
    with folder:
        setup = make_setup(cfg)
        orig = original_model(setup, resume=resume)
        before = weights_sha256(orig.model)
        work = folder.work if out else None
        engine = setup.engine(work, resume)
        model, seconds, fit = run_method(setup, orig.model, method, work, resume=resume, engine=engine)
        result: dict[str, Any] = {"original": orig.meta}
        oracle = None
        if wants_oracle(setup):  # eval.oracle=true or an oracle.* source (experiment/oracle_source.py)
            found = resolve_oracle(setup, orig)
            oracle = found.flat
            result["oracle"] = public(oracle)
            if out and is_main_process():  # reusable as oracle.stats=FILE
                export_oracle(folder.work / STATS_FILE, setup, found)
        metrics = public(evaluate_model(setup, model, oracle, orig))
        metrics |= public(attack_metrics(setup, model, oracle))  # attack.relearn: *_relearned
        metrics["RTE"] = seconds
        result["metrics"] = metrics
        engine.log_final(metrics)  # engine.tracker: the final metrics beside the step losses
        if out and is_main_process():  # the evaluation's documents (eval.lm_eval: lm_eval.json), published
            for name, doc in setup.protocol.documents().items():
                write_json(folder.work / name, doc)
            if tuned is not None:
                write_tune_files(folder.work, tuned, cfg)
        if out:  # every rank: a sharded model is gathered collectively; rank 0 alone writes
            result["receipt"] = write_run(
                out,
                cfg,
                model,
                metrics,
                setup.split.forget_ids_sha256(),
                len(setup.split.forget),
                before,
                extra={"oracle": result.get("oracle"), "steps": fit.steps, "training": fit.training},
                protect=protect,
                tokenizer=setup.data.meta.get("tokenizer"),
                folder=folder,
            )
    return result
