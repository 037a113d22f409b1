"""lm-evaluation-harness (EleutherAI's ``lm_eval``, an optional extra) on an in-memory causal LM.

``eval.lm_eval`` of the text protocols (TOFU, MUSE, WMDP) runs the harness's tasks on the evaluated model
through its Python API: ``lm_eval.simple_evaluate`` with ``lm_eval.models.huggingface.HFLM(pretrained=
<the model object>, tokenizer=<its tokenizer>)``, so the unlearned weights are scored as they are, with no
copy written to disk. Tasks are found by lm-eval's ``TaskManager`` (its built-in tasks, and the YAML task
files of ``include_path``); the scores are lm-eval's own, unscaled (``acc`` in [0, 1]).

Flat metrics: ``lm_eval/<task>/<metric>`` for every task and group in lm-eval's ``results`` (a metric with
a filter other than ``none`` keeps it: ``lm_eval/gsm8k/exact_match,strict-match``), standard errors left
out, and ``lm_eval/<task>/n`` the number of documents scored. The whole result dict (per-task configs,
versions, n-shot, the model and environment info lm-eval records; per-sample logs off) is what
:meth:`Harness.document` returns, stored as ``lm_eval.json`` in a run folder.

lm-eval seeds Python's, NumPy's and torch's global generators; their states are restored afterwards, so
an evaluation does not change what a later training draws. What lm-eval prints goes to stderr.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import random
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unlearnkit.errors import ConfigError, did_you_mean
from unlearnkit.metrics.generation import eval_mode

INSTALL = "pip install unlearnkit[lmeval]"
PREFIX = "lm_eval"


@dataclass
class LmEvalConfig:
    """``tasks``: lm-eval task, group or tag names (e.g. ``[mmlu, hellaswag]``); ``include_path``: a folder
    of local task YAML files (lm-eval's ``TaskManager(include_path=...)``; its tasks override built-ins of
    the same name); ``num_fewshot``: overrides each task's default (None: the task's own); ``limit``: at
    most this many documents per task (a number below 1: that fraction; lm-eval's ``limit``, for quick
    checks only); ``batch_size``: requests per forward pass; ``metrics``: the metric names kept in the flat
    metrics (None: all; ``lm_eval.json`` keeps everything); ``bootstrap_iters``: lm-eval's bootstrap for
    standard errors of non-mean metrics (0: none); ``add_bos_token``: HFLM's (None: the tokenizer's
    default)."""

    tasks: list[str] = field(default_factory=list)
    include_path: str | None = None
    num_fewshot: int | None = None
    limit: int | float | None = None
    batch_size: int = 8
    metrics: list[str] | None = None
    bootstrap_iters: int = 100000
    add_bos_token: bool | None = None

    def check(self) -> None:
        if not self.tasks:
            raise ConfigError(
                "eval.lm_eval.tasks is empty: name lm-eval tasks, e.g. eval.lm_eval.tasks=[mmlu]"
            )
        if self.include_path is not None and not Path(self.include_path).is_dir():
            raise ConfigError(
                f"eval.lm_eval.include_path={self.include_path!r} is not a folder: give the folder that "
                "holds your task YAML files"
            )
        if self.batch_size < 1:
            raise ConfigError(f"eval.lm_eval.batch_size must be at least 1, got {self.batch_size}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ConfigError(f"eval.lm_eval.num_fewshot must be 0 or more, got {self.num_fewshot}")
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"eval.lm_eval.limit must be positive (or null for all), got {self.limit}")
        if self.bootstrap_iters < 0:
            raise ConfigError(f"eval.lm_eval.bootstrap_iters must be 0 or more, got {self.bootstrap_iters}")


def import_lm_eval() -> Any:
    """The ``lm_eval`` package, or a ConfigError that says how to install it."""
    try:
        import lm_eval
    except ImportError:
        raise ConfigError(f"eval.lm_eval needs lm-evaluation-harness: {INSTALL}") from None
    return lm_eval


class Harness:
    """The harness for one ``eval.lm_eval`` section: :meth:`prepare` (validate, before training),
    :meth:`evaluate` (score a model), :meth:`document` (the last evaluation's whole result)."""

    def __init__(self, cfg: LmEvalConfig) -> None:
        self.cfg = cfg
        self.manager: Any = None
        self.last: dict[str, Any] | None = None

    def prepare(self) -> None:
        """Index the tasks, refuse unknown task names and metric names, and load each task (its dataset
        included) once, so a task that cannot load fails before any training."""
        if self.manager is not None:
            return
        manager = _task_manager(self.cfg)
        unknown = [t for t in self.cfg.tasks if t not in manager.all_tasks]
        if unknown:
            where = f" or in {self.cfg.include_path!r}" if self.cfg.include_path else ""
            raise ConfigError(
                f"eval.lm_eval.tasks: lm-eval has no task {unknown[0]!r}{where}: "
                f"{_task_hint(unknown[0], manager.all_tasks)}"
            )
        try:  # lm-eval and datasets raise many kinds of errors for a task that cannot load
            with _kept_rng():
                loaded = manager.load(list(self.cfg.tasks))
        except Exception as exc:  # noqa: BLE001
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"eval.lm_eval.tasks={self.cfg.tasks}: a task did not load: {first}") from None
        if self.cfg.metrics:
            known = sorted({m for t in loaded["tasks"].values() for m in t._metric_fn_list})
            bad = [m for m in self.cfg.metrics if m.split(",")[0] not in known]
            if bad:
                raise ConfigError(
                    f"eval.lm_eval.metrics: no task reports {bad[0]!r}: {did_you_mean(bad[0], known)}"
                )
        self.manager = manager

    def evaluate(self, model: nn.Module, tokenizer: Any) -> dict[str, float]:
        """Run the tasks on ``model`` (in eval mode, no gradients) and return the flat metrics; the whole
        result is kept for :meth:`document`. Under several processes, ranks other than the first get {}."""
        self.prepare()
        lm_eval = import_lm_eval()
        from lm_eval.models.huggingface import HFLM

        cfg = self.cfg
        # lm-eval prints progress notes; stdout stays for our own output (`unlearnkit evaluate --json`)
        with eval_mode(model), _kept_rng(), _quiet_git(), contextlib.redirect_stdout(sys.stderr):
            lm = HFLM(
                pretrained=model,
                tokenizer=tokenizer,
                batch_size=cfg.batch_size,
                add_bos_token=cfg.add_bos_token,
            )
            res = lm_eval.simple_evaluate(
                lm,
                tasks=list(cfg.tasks),
                num_fewshot=cfg.num_fewshot,
                limit=cfg.limit,
                bootstrap_iters=cfg.bootstrap_iters,
                log_samples=False,
                task_manager=self.manager,
            )
        if res is None:
            return {}
        self.last = json.loads(json.dumps(res, default=str))  # dtypes, devices -> their names
        return flatten(self.last, cfg.metrics)

    def document(self) -> dict[str, Any] | None:
        return self.last


def _git_hash() -> str | None:
    """lm-eval's record of the working directory's git commit (``git describe --always``), with git's own
    stderr discarded: outside a repository it printed "fatal: not a git repository" on ours."""
    try:
        done = subprocess.run(["git", "describe", "--always"], capture_output=True, check=True)  # noqa: S607
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.decode().strip() or None


@contextlib.contextmanager
def _quiet_git():
    """``lm_eval.evaluator.get_git_commit_hash`` replaced by :func:`_git_hash` while the harness runs."""
    import lm_eval.evaluator as evaluator

    if not hasattr(evaluator, "get_git_commit_hash"):  # another lm-eval version: leave it
        yield
        return
    saved = evaluator.get_git_commit_hash
    evaluator.get_git_commit_hash = _git_hash
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = saved


def flatten(results: dict[str, Any], metrics: list[str] | None = None) -> dict[str, float]:
    """``lm_eval/<task>/<metric>`` from lm-eval's result dict (see the module docstring); ``metrics``
    keeps only those names (``acc`` matches every filter of ``acc``; ``acc,strict`` only that one)."""
    out: dict[str, float] = {}
    for task, values in results.get("results", {}).items():
        for key, v in values.items():
            if "," not in key or "_stderr," in key or isinstance(v, bool) or not isinstance(v, int | float):
                continue
            name, filt = key.split(",", 1)
            if metrics and name not in metrics and key not in metrics:
                continue
            out[f"{PREFIX}/{task}/{name if filt == 'none' else key}"] = float(v)
    for task, n in results.get("n-samples", {}).items():
        if task in results.get("results", {}):
            out[f"{PREFIX}/{task}/n"] = int(n.get("effective", n.get("original", 0)))
    return out


def _task_hint(name: str, known: list[str]) -> str:
    """Close matches among the (thousands of) task names, not the whole list."""
    close = difflib.get_close_matches(name, known, n=3)
    if close:
        return f"did you mean {', '.join(repr(c) for c in close)}? ('lm-eval ls tasks' lists them all)"
    return "'lm-eval ls tasks' lists the built-in ones; local YAML files go in eval.lm_eval.include_path"


def _task_manager(cfg: LmEvalConfig) -> Any:
    """lm-eval's TaskManager. When every asked task is a local one, the built-in tasks (thousands of
    YAML files, seconds to index) are not indexed: local tasks take precedence over built-ins of the same
    name anyway, so the tasks found are the same."""
    import_lm_eval()
    from lm_eval.tasks import TaskManager

    if cfg.include_path is not None:
        local = TaskManager(include_path=cfg.include_path, include_defaults=False)
        if all(t in local.all_tasks for t in cfg.tasks):
            return local
    return TaskManager(include_path=cfg.include_path)


@contextlib.contextmanager
def _kept_rng() -> Any:
    """Restore Python's, NumPy's and torch's (CPU and CUDA) generator states after the block."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)
