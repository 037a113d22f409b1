"""Running a method on a copy of the original, training the original itself, and evaluating a model."""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unlearnkit.config import build_dataclass
from unlearnkit.distributed import broadcast_object, full_state_dict, is_sharded, load_full_state_dict
from unlearnkit.engine.loop import Engine, FitResult, Phase
from unlearnkit.errors import ConfigError
from unlearnkit.experiment.oracle_source import pretrained
from unlearnkit.experiment.setup import Setup
from unlearnkit.families.base import Original
from unlearnkit.methods.base import Method, Task
from unlearnkit.models.lora import apply_lora, merge_lora
from unlearnkit.registry import get_method, supports


def build_method(spec: dict[str, Any], family: str = "vision") -> Method:
    """The method a ``method:`` section names, its options validated, refused for a family it does not
    support."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if not name:
        raise ConfigError("method.name is missing: set method.name=<method> (see `unlearnkit list methods`)")
    cls = get_method(name)
    if not supports(cls, family):
        raise ConfigError(
            f"method {name!r} does not support the {family!r} family (it supports {cls.families})"
        )
    return cls(build_dataclass(cls.Config, spec, f"method({name})"))


def train_original(
    setup: Setup, model: nn.Module, run_dir: Path | None = None, resume: bool = False
) -> FitResult:
    """Train ``model`` on forget ∪ retain with the ``train:`` recipe (the model to be unlearned).

    With ``run_dir``, checkpoints (``engine.checkpoint_every``/``checkpoint_steps``) go there and
    ``resume`` continues from the last one."""
    engine = setup.engine(run_dir, resume)
    fam = setup.family

    def loss(b, ctx):
        return fam.mean_loss(model, b["train"]), {}

    return engine.fit(
        model,
        {"train": setup.split.train},
        lambda e: [Phase("train", ("train",), loss)],
        setup.train_spec,
        batch_sizes={"train": engine.cfg.batch_size},
        desc="original",
        seed=setup.seed,
    )


def _warm_up_torch() -> None:
    """Pay torch's one-time lazy imports before a timed run: the first optimizer a process builds imports
    ``torch._dynamo`` (~1 s here), which used to be billed to whichever method ran first as RTE."""
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)


def with_model_path(setup: Setup, path: str) -> Setup:
    """``setup`` with ``model.path`` replaced: its :meth:`~Setup.new_model` loads that folder."""
    return replace(setup, cfg=setup.cfg | {"model": dict(setup.cfg["model"]) | {"path": str(path)}})


def exact_start(setup: Setup) -> Setup:
    """The setup whose fresh model is an exact method's (``retrain``'s) starting point: the setup itself for
    a model built here (a fresh initialisation), the ``oracle.base`` folder for a pretrained one (its own
    weights were fine-tuned with the forget set: retraining from them would not be exact)."""
    if not pretrained(setup.cfg):
        return setup
    if setup.oracle.base is None:
        path = setup.cfg["model"].get("path")
        raise ConfigError(
            f"retrain on a pretrained model (model.path={path}) would start from weights already trained "
            "with the forget set: give oracle.base=DIR, the base model that retrain fine-tunes on the retain "
            "set with the train: recipe (e.g. the checkpoint you fine-tuned from)"
        )
    return with_model_path(setup, setup.oracle.base)


def run_method(
    setup: Setup,
    original: nn.Module,
    method: Method,
    run_dir: Path | None = None,
    resume: bool = False,
    engine: Engine | None = None,
) -> tuple[nn.Module, float, FitResult]:
    """Unlearn a deep copy of ``original`` (never the input itself); returns (model, seconds, fit).

    ``resume`` continues from the last checkpoint in ``run_dir`` (see ``Engine.fit``). ``engine``: the
    engine to train with (default ``setup.engine(run_dir, resume)``); pass one to log the final metrics to
    its tracker afterwards (``Engine.log_final``)."""
    if is_sharded(original):  # trained under FSDP/ZeRO-3 in this run; FSDP modules cannot be deep-copied
        model = setup.new_model()
        load_full_state_dict(model, full_state_dict(original, all_ranks=True))
    else:
        model = copy.deepcopy(original)
    lora = None if method.exact else setup.cfg["model"].get("lora")  # the oracle retrains fully
    start = exact_start(setup) if method.exact else setup
    if lora:
        model = apply_lora(model, dict(lora))
    task = Task(
        setup.family,
        model,
        setup.split,
        engine or setup.engine(run_dir, resume),
        setup.seed,
        model_factory=lambda: start.new_model(setup.seed + 10_007),
        train_spec=setup.train_spec,
    )
    _warm_up_torch()
    t0 = time.perf_counter()
    fit = method.run(task)
    if lora:
        task.model = merge_lora(task.model)
    seconds = time.perf_counter() - t0
    return task.model, seconds, fit


def attack_metrics(setup: Setup, model: nn.Module, oracle: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config's ``attack.relearn`` on ``model`` (a fine-tuned copy; the model is not touched): the
    forget metrics after it, ``*_relearned``; {} without an attack."""
    spec = (setup.cfg.get("attack") or {}).get("relearn")
    if spec is None:
        return {}
    return broadcast_object(setup.protocol.relearn(setup, model, oracle, dict(spec)))


def evaluate_model(
    setup: Setup,
    model: nn.Module,
    oracle: dict[str, Any] | str | None = None,
    original: Original | None = None,
) -> dict[str, Any]:
    """The protocol's metrics (public and ``_``-prefixed private values in one mapping); with the oracle's
    metrics, also the comparisons to it (gap, forget quality). ``original`` is what
    :func:`~unlearnkit.experiment.original_model` returned (a protocol may need its extras, e.g. the judge).

    ``oracle="self"`` evaluates the oracle itself and compares it with its own values. Under several
    processes every rank evaluates the (identical) model on the whole split, so that collective forward
    passes (DeepSpeed ZeRO-3) stay in step, and every rank returns rank 0's metrics.
    """
    return broadcast_object(setup.protocol.evaluate(setup, model, oracle, original).flat())
