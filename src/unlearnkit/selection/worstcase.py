"""Worst-case forget sets by bi-level optimisation (Unlearn-WorstCase, Fan et al., ECCV 2024).

The problem (paper Eq. 3; ``classification.md`` §4.1) over a candidate pool of N units:

    min_{w ∈ S}  F(w) = Σ_i w_i ℓ_i(θ*(w)) + γ‖w‖²,       S = {0 ≤ w ≤ 1, 1ᵀw = m}
    s.t.  θ*(w) = the unlearning run that forgets w

i.e. the forget set whose losses stay *lowest* after unlearning: the samples that are hardest to forget.

Lower level, ``lower=``:
  * ``retrain`` / ``ft`` (the reference ``w_retrain`` / ``w_FT``): minimise Σ_i (1 − w_i) ℓ_i(θ) over the
    whole pool from a fresh initialisation / from the original model, with sign-SGD
    θ ← θ − lr·sign(∇θ) (the paper's choice) or a plain optimizer (``optimizer=sgd|adam|adamw|plain``).
  * any other registered method (``rl``, ``ga``, ``salun``, ...): run through the method registry on the
    current binarised sets (forget = top-m of w), as the reference ``w_RL`` does.

Upper level (``unlearn/impl.py::optimize_select``): only the partial derivative ∂F/∂w is used; with sign-SGD
the Jacobian dθ_K/dw vanishes almost everywhere, so the hypergradient is g = ℓ(θ*) + 2γw and

    w ← Proj_S(w − η_t·g),      every ``binarize_every`` iterations  w ← top-m(w).

Step size. The reference default η = 0.01 barely moves w (losses after unlearning are ~1e-3–1, and the
projection removes any common shift). We normalise instead: η_t = ``step`` / s_t, where s_t is the spread
of g over the 2m lowest entries (the band of candidates for the top m; ``_band_scale``). A loss gap
as wide as that band moves w by ``step``; entries far above it are pushed to 0 by the projection at
once. ``w_lr`` sets an absolute η as in the reference. Warm start (``retrain`` only): each lower level
continues from the previous θ instead of a fresh initialisation, so K iterations cost ``first_epochs`` +
K·``lower_epochs`` epochs instead of K retrains.

What a family must provide (the selector touches nothing else, so text and diffusion reuse it):
  * ``family.per_example_loss(model, batch) -> Tensor[B]`` with gradients (the lower level) and without
    (the upper gradient); a stochastic loss (diffusion) should pass a deterministic ``loss_fn``;
  * ``family.relabel`` only if a relabelling lower level (``rl``, ``salun``) is chosen;
  * a pool :class:`ExampleSet` with stable ids, the original model and, for ``retrain``, a model factory.
Units are groups of pool examples (``groups``; a unit's loss is the mean over its examples): one example
each (data-wise), a class (``select_worst_classes``), a prompt (diffusion, prompt-wise) or a question /
author (text) — the latter two only need a ``groups`` tensor from their family.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from unlearnkit.data.examples import Batch, ExampleSet
from unlearnkit.data.splits import Split
from unlearnkit.engine.loop import Engine, Phase
from unlearnkit.engine.optim import OPTIMIZERS, OptimSpec
from unlearnkit.errors import ConfigError, UnlearnkitError
from unlearnkit.families.base import Family
from unlearnkit.selection.projection import project_capped_simplex, top_m_indicator

WEIGHTED_LOWER = ("retrain", "ft")


@dataclass
class WorstCaseConfig:
    """Selector settings; defaults are tuned on digits (see the module docstring and the report)."""

    lower: str = "ft"
    optimizer: str = "signsgd"
    lower_lr: float = 1e-3
    lower_epochs: int = 2
    first_epochs: int = 10
    warm_start: bool = True
    iters: int = 6
    step: float = 0.5
    w_lr: float | None = None
    gamma: float = 0.0
    binarize_every: int = 3
    init: str = "uniform"
    lower_options: dict[str, Any] = field(default_factory=dict)
    batch_size: int | None = None
    seed: int | None = None

    def check(self) -> None:
        if self.optimizer not in (*OPTIMIZERS, "plain"):
            raise ConfigError(
                f"select.optimizer must be one of {(*OPTIMIZERS, 'plain')}, got {self.optimizer!r}"
            )
        if self.iters < 1:
            raise ConfigError(f"select.iters must be >= 1, got {self.iters}")
        if self.lower_epochs < 1 or self.first_epochs < 1:
            raise ConfigError("select.lower_epochs and select.first_epochs must be >= 1")
        if self.binarize_every < 0:
            raise ConfigError(
                f"select.binarize_every must be >= 0 (0 = only at the end), got {self.binarize_every}"
            )
        if not self.step > 0 or (self.w_lr is not None and not self.w_lr > 0):
            raise ConfigError("select.step and select.w_lr must be > 0")
        if self.gamma < 0:
            raise ConfigError(f"select.gamma must be >= 0, got {self.gamma}")
        if self.init not in ("uniform", "random"):
            raise ConfigError(f"select.init must be 'uniform' or 'random', got {self.init!r}")


@dataclass
class SelectionTask:
    """What the selector needs from a family's task (nothing vision-specific)."""

    family: Family
    original: nn.Module
    pool: ExampleSet
    engine: Engine
    holdout: ExampleSet | None = None
    model_factory: Callable[[], nn.Module] | None = None
    train_spec: OptimSpec | None = None
    seed: int = 0
    method_specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor] | None = None

    def losses(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return (self.loss_fn or self.family.per_example_loss)(model, batch)


@dataclass
class SelectionResult:
    ids: list[int]
    units: list[int]
    size: int
    weights: list[float]
    trajectory: list[float]
    forget_loss: list[float]
    seconds: float
    lower_steps: int
    config: dict[str, Any]


def resolve_size(size: int | float | str, n: int, what: str = "pool") -> int:
    """m from a count (``10``), a fraction (``0.1``) or a percent string (``"10%"``); 1 <= m < n."""
    raw = size
    if isinstance(size, str):
        s = size.strip()
        try:
            size = float(s[:-1]) / 100.0 if s.endswith("%") else float(s)
        except ValueError:
            raise ConfigError(
                f"size must be a count, a fraction or a percent like '10%', got {raw!r}"
            ) from None
        if not s.endswith("%") and size.is_integer():
            size = int(size)
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise ConfigError(f"size must be a count, a fraction or a percent like '10%', got {raw!r}")
    if isinstance(size, float) and size.is_integer() and size >= 1:
        size = int(size)
    m = size if isinstance(size, int) else int(round(size * n))
    if isinstance(size, float) and not 0 < size < 1:
        raise ConfigError(f"size {raw!r} must be a fraction in (0, 1), a percent in (0%, 100%) or a count")
    if not 1 <= m < n:
        raise ConfigError(f"size {raw!r} gives m = {m} but the {what} has {n} units: choose 1 <= m < {n}")
    return m


def per_unit_losses(
    task: SelectionTask, model: nn.Module, inverse: torch.Tensor, n_units: int
) -> torch.Tensor:
    """ℓ_u(θ) = mean of the per-example losses of unit u's pool examples (eval mode, no gradients)."""
    dev = task.engine.device
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for batch in task.pool.loader(task.engine.cfg.eval_batch_size):
            out.append(task.losses(model, {k: v.to(dev) for k, v in batch.items()}).float().cpu())
    model.train(was_training)
    per_ex = torch.cat(out)
    sums = torch.zeros(n_units, dtype=torch.float64).index_add_(0, inverse, per_ex.double())
    counts = torch.bincount(inverse, minlength=n_units).double()
    return sums / counts


def _band_scale(g: torch.Tensor, m: int) -> float:
    """Spread of the 2m lowest entries of g (the candidates for the top m); falls back to the full range."""
    s = torch.sort(g).values
    k = min(len(s) - 1, 2 * m)
    for spread in (float(s[k] - s[0]), float(s[-1] - s[0])):
        if spread > 1e-12:
            return spread
    return 1.0


class WorstCaseSelector:
    """Runs the alternating scheme of the module docstring on one :class:`SelectionTask`."""

    def __init__(self, task: SelectionTask, cfg: WorstCaseConfig | None = None) -> None:
        self.task = task
        self.cfg = cfg or WorstCaseConfig()
        self.cfg.check()
        self._check_lower()
        self.steps = 0
        self._warm: nn.Module | None = None
        sorted_ids, order = torch.sort(task.pool.ids)
        self._sorted_ids, self._order = sorted_ids, order

    def _check_lower(self) -> None:
        name = self.cfg.lower
        if name in WEIGHTED_LOWER:
            if name == "retrain" and self.task.model_factory is None:
                raise UnlearnkitError(
                    "the retrain lower level needs a model factory (a fresh initialisation)"
                )
            return
        from unlearnkit.pipeline import build_method
        from unlearnkit.registry import list_names

        if name not in list_names("method"):
            choices = sorted(set(WEIGHTED_LOWER) | set(list_names("method")))
            raise ConfigError(
                f"unknown lower-level method {name!r} for select.lower; choose one of {choices}"
            )
        build_method(self._method_spec(), self.task.family.name or "vision")  # validate options early

    def _method_spec(self) -> dict[str, Any]:
        spec = dict(self.task.method_specs.get(self.cfg.lower, {})) | {"name": self.cfg.lower}
        return spec | {"epochs": self.cfg.lower_epochs} | dict(self.cfg.lower_options)

    # -- lower level ---------------------------------------------------------------------------------
    def _positions(self, ids: torch.Tensor) -> torch.Tensor:
        sid = self._sorted_ids.to(ids.device)
        return self._order.to(ids.device)[torch.searchsorted(sid, ids)]

    def _optim(self, epochs: int) -> OptimSpec:
        c, ts = self.cfg, self.task.train_spec or OptimSpec()
        if c.optimizer == "signsgd":
            return OptimSpec(epochs=epochs, lr=c.lower_lr, optimizer="signsgd", weight_decay=0.0)
        opt = ts.optimizer if c.optimizer == "plain" else c.optimizer
        return OptimSpec(
            epochs=epochs, lr=c.lower_lr, optimizer=opt, momentum=ts.momentum, weight_decay=ts.weight_decay
        )

    def _lower_weighted(self, w_ex: torch.Tensor, it: int) -> nn.Module:
        """min_θ Σ_i (1 − w_i) ℓ_i(θ) over the pool (batch mean), from θ_o (ft) or an init (retrain)."""
        task, c = self.task, self.cfg
        if c.lower == "ft":
            model, epochs = copy.deepcopy(task.original), c.lower_epochs
        elif c.warm_start and self._warm is not None:
            model, epochs = self._warm, c.lower_epochs
        else:
            model, epochs = task.model_factory(), c.first_epochs  # type: ignore[misc]
        dev = task.engine.device
        keep = (1.0 - w_ex).to(dev)

        def loss(b, ctx):
            batch = b["pool"]
            wts = keep[self._positions(batch["id"])]
            return (wts * task.losses(model, batch)).sum() / len(wts), {}

        bs = {"pool": c.batch_size or task.engine.cfg.batch_size}
        fit = task.engine.fit(
            model, {"pool": task.pool}, lambda e: [Phase("pool", ("pool",), loss)], self._optim(epochs),
            batch_sizes=bs, desc=f"select-{c.lower}", seed=self._seed + it,
        )  # fmt: skip
        self.steps += fit.steps
        if c.lower == "retrain" and c.warm_start:
            self._warm = model
        return model

    def _lower_method(self, forget_ex: torch.Tensor, it: int) -> nn.Module:
        """A registered method on the binarised sets: forget = pool examples of the top-m units."""
        from unlearnkit.methods.base import Task
        from unlearnkit.pipeline import build_method

        task = self.task
        method = build_method(self._method_spec(), task.family.name or "vision")
        fpos = forget_ex.nonzero().squeeze(1)
        rpos = (~forget_ex).nonzero().squeeze(1)
        split = Split(task.pool.take(fpos), task.pool.take(rpos), task.holdout, "worstcase-lower")  # type: ignore[arg-type]
        model = copy.deepcopy(task.original)
        t = Task(task.family, model, split, task.engine, self._seed + it, task.model_factory, task.train_spec)
        self.steps += method.run(t).steps
        return t.model

    # -- the bi-level loop ---------------------------------------------------------------------------
    def run(self, size: int | float | str, groups: torch.Tensor | None = None) -> SelectionResult:
        """Select the worst-case m units; ``groups[i]`` is the unit of pool example i (None = itself)."""
        task, c = self.task, self.cfg
        n_ex = len(task.pool)
        if groups is None:
            unit_ids, inverse = task.pool.ids.clone(), torch.arange(n_ex)
        else:
            if len(groups) != n_ex:
                raise UnlearnkitError(f"groups has {len(groups)} entries for a pool of {n_ex} examples")
            unit_ids, inverse = torch.unique(torch.as_tensor(groups), return_inverse=True)
        n = len(unit_ids)
        m = resolve_size(size, n, "pool" if groups is None else "set of groups")
        self._seed = task.seed if c.seed is None else c.seed
        self._warm = None
        gen = torch.Generator().manual_seed(self._seed)
        if c.init == "random":
            w = torch.zeros(n, dtype=torch.float64)
            w[torch.randperm(n, generator=gen)[:m]] = 1.0
        else:
            w = torch.full((n,), m / n, dtype=torch.float64)
        traj, fl = [], []
        t0 = time.perf_counter()
        for it in range(c.iters):
            w_ex = w[inverse].float()
            if c.lower in WEIGHTED_LOWER:
                model = self._lower_weighted(w_ex, it)
            else:
                model = self._lower_method(top_m_indicator(w, m)[inverse].bool(), it)
            losses = per_unit_losses(task, model, inverse, n)
            traj.append(float((w * losses).sum() + c.gamma * (w * w).sum()))
            fl.append(float(losses[top_m_indicator(w, m).bool()].mean()))
            g = losses + 2.0 * c.gamma * w
            eta = c.w_lr if c.w_lr is not None else c.step / _band_scale(g, m)
            w = project_capped_simplex(w - eta * g, m)
            if c.binarize_every and (it + 1) % c.binarize_every == 0:
                w = top_m_indicator(w, m)
        chosen = top_m_indicator(w, m).bool()
        ids = sorted(int(i) for i in task.pool.ids[chosen[inverse]].tolist())
        return SelectionResult(
            ids=ids,
            units=sorted(int(u) for u in unit_ids[chosen].tolist()),
            size=m,
            weights=[float(x) for x in w],
            trajectory=traj,
            forget_loss=fl,
            seconds=time.perf_counter() - t0,
            lower_steps=self.steps,
            config=asdict(c),
        )


def select_worst_case(
    task: SelectionTask, size: int | float | str, cfg: WorstCaseConfig | None = None
) -> SelectionResult:
    """Data-wise worst-case forget set: one unit per pool example."""
    return WorstCaseSelector(task, cfg).run(size)


def select_worst_classes(
    task: SelectionTask, size: int | float | str, cfg: WorstCaseConfig | None = None
) -> SelectionResult:
    """Class-wise (paper §4.2): w over classes, a class's loss = the mean loss of its pool examples."""
    return WorstCaseSelector(task, cfg).run(size, groups=task.pool.labels)
