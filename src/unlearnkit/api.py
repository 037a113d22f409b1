"""The Python API: ``unlearn``, ``evaluate`` and ``run_config``.

``unlearn`` accepts a user's own ``torch.nn.Module`` and data (ExampleSets, ``(x, y)`` tensor tuples or
map-style datasets of ``(x, y)`` pairs); the input model is never modified: methods work on a copy.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from unlearnkit.config import build_dataclass
from unlearnkit.data.examples import as_example_set
from unlearnkit.data.splits import Split, validate_labels
from unlearnkit.engine.loop import Engine, EngineConfig
from unlearnkit.errors import ConfigError, UnlearnkitError
from unlearnkit.io import weights_sha256
from unlearnkit.protocols.base import public


@dataclass
class UnlearnResult:
    model: nn.Module
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    run_dir: Path | None = None
    receipt: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def _split(forget, retain, test) -> Split:
    """Forget/retain/test from user data. Data given without ids is numbered forget first (0..N_f-1),
    then retain (N_f..), so the two never collide; ExampleSets keep their own ids."""
    from unlearnkit.data.examples import ExampleSet

    f = as_example_set(forget, "forget")
    r = as_example_set(retain, "retain")
    if not isinstance(retain, ExampleSet) and not (isinstance(retain, dict) and "id" in retain):
        r = ExampleSet(r.columns, r.ids + (int(f.ids.max()) + 1 if len(f) else 0), r.transform, r.meta)
    t = as_example_set(test, "test") if test is not None else None
    if t is None:
        raise ConfigError("a test set is needed (TA and the MIA use held-out data): pass test=...")
    from unlearnkit.data.checks import check_finite

    for name, s in (("forget set", f), ("retain set", r), ("test set", t)):
        check_finite(s, name)
    return Split(f, r, t)


def _num_classes(split: Split, num_classes: int | None, model: nn.Module) -> int:
    if num_classes is not None:
        return num_classes
    from unlearnkit.families.vision import VisionFamily

    fam = VisionFamily()
    fam.validate(model, split.forget)
    return int(fam.num_classes)


def unlearn(
    model: nn.Module,
    method: str = "salun",
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
    overwrite: bool = False,
    **method_options: Any,
) -> UnlearnResult:
    """Unlearn ``forget`` from a copy of ``model`` with ``method``; returns the new model and its metrics.

    Method options go in ``options`` or as keyword arguments (``lr=0.01, epochs=5``). An ``out`` folder that
    holds another run is refused unless ``overwrite``.
    """
    from unlearnkit.experiment import build_method
    from unlearnkit.families.vision import VisionFamily

    if family != "vision":
        raise UnlearnkitError(f"the API does not support family {family!r} yet; use 'vision'")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    m = build_method({"name": method} | (options or {}) | method_options, family)
    split = _split(forget, retain, test)
    work = copy.deepcopy(model)
    k = _num_classes(split, num_classes, work)
    fam = VisionFamily(num_classes=k)
    for name, s in (("forget set", split.forget), ("retain set", split.retain), ("test set", split.test)):
        validate_labels(s, k, name)
    fam.validate(work, split.forget)
    ecfg = build_dataclass(EngineConfig, {"progress": False} | (engine or {}) | {"seed": seed}, "engine")
    from unlearnkit.engine.devices import require_device

    require_device(ecfg.device)
    cfg = {"family": family, "seed": seed, "method": {"name": method} | (options or {}) | method_options}
    if out is not None:
        from unlearnkit.runs.folder import RunFolder

        with RunFolder(out, cfg, overwrite=overwrite) as folder:
            return _unlearn(m, fam, work, split, ecfg, seed, k, evaluate, out, cfg, folder)
    return _unlearn(m, fam, work, split, ecfg, seed, k, evaluate, None, cfg, None)


def _unlearn(m, fam, work, split, ecfg, seed, k, evaluate, out, cfg, folder) -> UnlearnResult:
    from unlearnkit.methods.base import Task

    before = weights_sha256(work)
    task = Task(fam, work, split, Engine(ecfg, folder.work if folder else None), seed)
    t0 = time.perf_counter()
    fit = m.run(task)
    seconds = time.perf_counter() - t0
    metrics = (
        evaluate_fn(task.model, split.forget, split.retain, split.test, num_classes=k) if evaluate else {}
    )
    metrics = metrics | {"RTE": seconds} if evaluate else metrics
    res = UnlearnResult(task.model, metrics, seconds, Path(out) if out else None, history=fit.history)
    if out is not None:
        from unlearnkit.runs.record import write_run

        ids_sha, n = split.forget_ids_sha256(), len(split.forget)
        # rank 0 writes; the other ranks get no receipt
        res.receipt = write_run(out, cfg, task.model, metrics, ids_sha, n, before, folder=folder) or {}
    return res


def evaluate_fn(
    model: nn.Module,
    forget: Any,
    retain: Any,
    test: Any,
    family: str = "vision",
    num_classes: int | None = None,
    mia_features: tuple[str, ...] = ("confidence",),
    oracle: dict[str, float] | None = None,
) -> dict[str, float]:
    """UA, RA, TA and MIA-Efficacy (percent) of ``model``; with ``oracle`` metrics, also ``gap``."""
    from unlearnkit.families.vision import VisionFamily
    from unlearnkit.metrics.vision import avg_gap, evaluate_classifier

    if family != "vision":
        raise UnlearnkitError(f"evaluate() does not support family {family!r} yet; use 'vision'")
    split = _split(forget, retain, test)
    k = _num_classes(split, num_classes, model)
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
) -> dict[str, Any]:
    """Run one unlearning job from a config dict (what ``unlearnkit unlearn`` does).

    ``resume`` continues a killed job from its last checkpoint in ``out`` (and a killed training of the
    original from the cache); the final weights and metrics equal an uninterrupted run's (RTE aside). The
    config must equal the run's saved one unless ``resume_with_changes`` (then both are recorded). An ``out``
    that holds another run is refused unless ``overwrite`` or a resume (``runs/folder.py``).
    Under several processes only the main process writes ``out``."""
    from unlearnkit.engine.devices import require_device
    from unlearnkit.experiment import (
        build_method,
        evaluate_model,
        make_setup,
        oracle_model,
        original_model,
        resolve,
        run_method,
    )
    from unlearnkit.runs.folder import RunFolder

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
    if resume and not out:
        raise ConfigError("--resume needs the --out folder of the run to continue")
    folder = RunFolder(out, cfg, overwrite, resume, resume_with_changes) if out else contextlib.nullcontext()
    with folder:
        setup = make_setup(cfg)
        orig = original_model(setup, resume=resume)
        before = weights_sha256(orig.model)
        work = folder.work if out else None
        model, seconds, fit = run_method(setup, orig.model, method, work, resume=resume)
        result: dict[str, Any] = {"original": orig.meta}
        oracle = None
        if setup.protocol.cfg.oracle:
            retrain = build_method({"name": "retrain"}, cfg["family"])
            oracle_m, oracle_s = oracle_model(setup, retrain, orig.model)
            oracle = evaluate_model(setup, oracle_m, "self", orig) | {"RTE": oracle_s}
            result["oracle"] = public(oracle)
        metrics = public(evaluate_model(setup, model, oracle, orig))
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
                folder=folder,
            )
    return result
