"""Config-driven worst-case selection: suite config -> original model -> selector -> ids JSON.

Shared by ``unlearnkit select worstcase`` and the ``worstcase-digits`` suite. The pool is the whole
training set of the suite's data (stable ids), the held-out set is its test set, and the lower-level
methods take their options from the suite's ``methods:`` section when the suite lists them.
The selector's options live in a ``select:`` section (YAML or ``select.key=value`` overrides).

Granularities: ``example`` (data-wise), ``class`` (class-wise) and ``prompt`` (diffusion: the distinct
captions of the pool, :mod:`unlearnkit.selection.prompts`, whose defaults go under the user's ``select:``).
A prompt selection's JSON also lists ``prompts``; ``split.kind=concept split.prompts_file=FILE`` erases them
(and ``split.kind=ids split.ids_file=FILE`` forgets exactly their images).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unlearnkit.config import build_dataclass, refuse_ignored
from unlearnkit.errors import ConfigError
from unlearnkit.experiment import make_setup, original_model
from unlearnkit.experiment.suites import load_suite
from unlearnkit.io import write_json
from unlearnkit.selection.prompts import PROMPT_DEFAULTS, select_worst_prompts
from unlearnkit.selection.worstcase import (
    SelectionResult,
    SelectionTask,
    WorstCaseConfig,
    select_worst_case,
    select_worst_classes,
)

GRANULARITIES = ("example", "class", "prompt")


def split_suite_config(
    cfg: dict[str, Any], granularity: str = "example"
) -> tuple[dict[str, Any], dict[str, dict], WorstCaseConfig]:
    """(pipeline config, method specs, selector config) from a loaded suite config (not modified); for
    ``granularity="prompt"`` the prompt-wise defaults fill the ``select:`` keys the config leaves unset."""
    cfg = dict(cfg)
    methods = {k: dict(v or {}) for k, v in (cfg.pop("methods", None) or {}).items()}
    sel = cfg.pop("select", None) or {}
    if not isinstance(sel, dict):
        raise ConfigError(f"the select section must be a mapping, got {sel!r}")
    if granularity == "prompt":
        sel = PROMPT_DEFAULTS | sel
    for key in (
        "suite",
        "kind",
        "size",
        "granularity",
        "keys",
        "caption",
        "attack",
        "plot",
        "mode",
        "requests",
    ):
        cfg.pop(key, None)  # suite-only sections
    return cfg, methods, build_dataclass(WorstCaseConfig, sel, "select")


def selection_task(setup, original, method_specs: dict[str, dict] | None = None) -> SelectionTask:
    """A :class:`SelectionTask` over ``setup``'s full training set (experiment.Setup + original model)."""
    return SelectionTask(
        family=setup.family,
        original=original,
        pool=setup.data.train,
        engine=setup.engine(),
        holdout=setup.data.test,
        model_factory=lambda: setup.new_model(setup.seed + 10_007),
        train_spec=setup.train_spec,
        seed=setup.seed,
        method_specs=method_specs or {},
    )


def run_selection(
    setup, original, size: int | float | str, cfg: WorstCaseConfig, methods: dict | None = None,
    granularity: str = "example",
) -> SelectionResult:  # fmt: skip
    if granularity not in GRANULARITIES:
        raise ConfigError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    task = selection_task(setup, original, methods)
    if granularity == "prompt":
        if not setup.family.prompt_units:
            raise ConfigError(
                f"--granularity prompt selects captions of a text-to-image suite; {setup.family.name!r} "
                "has none (text questions: --granularity example)"
            )
        return select_worst_prompts(task, size, cfg, setup.data.meta.get("tokenizer"))
    fn = select_worst_classes if granularity == "class" else select_worst_case
    return fn(task, size, cfg)


def payload(res: SelectionResult, suite: str, seed: int, granularity: str, pool_size: int) -> dict[str, Any]:
    """The JSON written by ``select``: ``split.kind=ids split.ids_file=FILE`` reads its ``ids``."""
    out: dict[str, Any] = {
        "ids": res.ids,
        "size": len(res.ids),
        "units": res.size,
        "granularity": granularity,
        "suite": suite,
        "seed": seed,
        "pool_size": pool_size,
        "config": res.config,
        "trajectory": res.trajectory,
        "forget_loss": res.forget_loss,
        "best_iter": res.best_iter,
        "seconds": res.seconds,
        "lower_steps": res.lower_steps,
    }
    if granularity == "class":
        out["classes"] = res.units
    if granularity == "prompt":
        out["prompts"] = res.unit_names
        out["prompt_pool"] = res.pool_names
    if res.unit_losses:
        out["unit_losses"] = res.unit_losses
    return out


def select_for_suite(
    suite: str, size: int | float | str, out: str | Path | None = None, overrides: list[str] | None = None,
    granularity: str = "example",
) -> dict[str, Any]:  # fmt: skip
    """Load ``suite`` (+ overrides), train or load its original model, select, and write ``out``."""
    refuse_ignored(list(overrides or []), {"out": "select writes the ids to --out FILE"})
    loaded = load_suite(suite, overrides)
    name = loaded.get("suite", suite)
    cfg, methods, sel = split_suite_config(loaded, granularity)
    cfg.setdefault("engine", {})["progress"] = False
    setup = make_setup(cfg)
    original = original_model(setup).model
    res = run_selection(setup, original, size, sel, methods, granularity)
    obj = payload(res, name, setup.seed, granularity, len(setup.data.train))
    if out is not None:
        write_json(out, obj)
    return obj
