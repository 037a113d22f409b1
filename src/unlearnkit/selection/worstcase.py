"""Worst-case forget sets by bi-level optimisation (Unlearn-WorstCase, Fan et al., ECCV 2024).

The problem (paper Eq. 3; ``classification.md`` §4.1) over a candidate pool of N units:

    min_{w ∈ S}  F(w) = Σ_i w_i ℓ_i(θ*(w)) + γ‖w‖²,       S = {0 ≤ w ≤ 1, 1ᵀw = m}
    s.t.  θ*(w) = the unlearning run that forgets w          (the lower level, ``selection.lower``)

i.e. the forget set whose losses stay *lowest* after unlearning: the samples that are hardest to forget.

Upper level (reference ``unlearn/impl.py::optimize_select``): only the partial derivative ∂F/∂w is used;
with sign-SGD in the lower level the Jacobian dθ_K/dw vanishes almost everywhere, so the hypergradient is
g = ℓ(θ*) + 2γw and

    w ← Proj_S(w − η_t·g)        (``projection.project_capped_simplex``, bisection on μ)
    w ← top-m(w)                 every ``binarize_every`` iterations.

Step size. The reference η = 0.01 barely moves w: losses after unlearning are ~1e-4–1 and the projection
removes any common shift, so from the reference's random initial set w never leaves that set (our test
shows it). We normalise: η_t = ``step`` / s_t, with s_t the spread of g over its 2m lowest entries (the
band of candidates for the top m, ``_band_scale``): a loss gap as wide as that band moves w by ``step``
(0.5), and entries far above the band go to 0 at once through the projection. ``w_lr`` restores an
absolute η as in the reference.

Returned set. A first-order update oscillates (a forgotten unit's loss rises, so it is swapped out, then
relearned and swapped back in), most visibly with binarised lower levels. Each lower level that saw a
binary w evaluates the true objective of that set, so the selector returns the evaluated set with the
lowest mean forget loss (``best_iter``); the final top-m set is always evaluated (one extra lower level).

What a family must provide (the selector touches nothing else, so text and diffusion can reuse it):
  * ``family.per_example_loss(model, batch) -> Tensor[B]``, differentiable (the lower level) and without
    gradients (the upper gradient); a stochastic loss (diffusion: random t and noise) should come with a
    deterministic ``SelectionTask.loss_fn`` (fixed timesteps and noise) for the upper level;
  * ``family.relabel`` only for a relabelling lower level (``rl``, ``salun``);
  * a pool :class:`ExampleSet` with stable ids, the original model and, for ``retrain``, a model factory.
Units are groups of pool examples (``groups``; a unit's loss is the mean over its examples): one example
each (data-wise), a class (``select_worst_classes``, paper §4.2), a prompt (``selection.prompts``,
diffusion, the reference's prompt-wise variant: groups = distinct captions, lower = forget-weighted ESD) or
a question / author (text) through ``select_worst_groups``; a family needs only a ``groups`` tensor, a
deterministic ``loss_fn`` where its loss is stochastic, and (for binarised lower levels) its methods in
the registry. ``per_unit`` caps the examples per group the bi-level loop sees (a seeded subsample, the
same for every iteration); the returned ``ids`` are still all pool examples of the chosen groups.

Baseline. ``baseline="original"`` replaces ℓ_i(θ*(w)) in F by the unlearning *gap* ℓ_i(θ*(w)) − ℓ_i(θ_o)
(θ_o the original, evaluated once): a constant per unit, so the hypergradient only shifts, but it stops
units whose loss is low for every model (easy images, short answers) from counting as "hard to forget".
The paper uses the raw loss (``"none"``, the default for examples and classes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from unlearnkit.data.examples import Batch, ExampleSet
from unlearnkit.engine.loop import Engine
from unlearnkit.engine.optim import OPTIMIZERS, OptimSpec
from unlearnkit.errors import ConfigError, UnlearnkitError
from unlearnkit.families.base import Family
from unlearnkit.selection.lower import LowerLevel, per_unit_losses
from unlearnkit.selection.projection import project_capped_simplex, top_m_indicator


@dataclass
class WorstCaseConfig:
    """Selector settings (``select:`` in a suite, ``select.KEY=VALUE`` on the command line).

    Defaults, measured on digits (MLP, 1,437 pool examples) and on the planted tests:
    * ``lower="auto"``: ``retrain`` for data-wise selection when a model factory exists, else ``ft``.
      Exact unlearning's losses define "hard to forget" by what the retained data alone predicts (on its
      sets the retrained oracle's UA is 0 on digits); FT from the original inherits the original's uneven
      confidence (on the planted test one class's planted points had loss ~1e-3 while ordinary points of
      the other class had ~1e-5), so it found 50–90% of the planted samples over 5 seeds against 100% for
      retrain. Class-wise selection uses ``ft`` (paper §4.2: a class never trained on has no meaningful
      loss), as do families whose models cannot be retrained cheaply (LLMs); the diffusion family uses
      ``esd`` (forget-weighted ESD, the reference's prompt-wise lower level).
    * ``optimizer="signsgd"``, ``lower_lr=1e-3`` (the paper's optimizer; lr 1e-3 gives 95% train / 94% test
      accuracy after ``first_epochs=10`` on digits), ``lower_epochs=2`` per warm-started lower level.
    * ``iters=6``, ``binarize_every=3``, ``step=0.5``, ``init="uniform"`` (w = m/N: no random-set bias;
      ``"random"`` starts from a random set's indicator as the reference does).
    Cost: ``first_epochs`` + ``iters``·``lower_epochs`` pool epochs (22) and ``iters`` + 1 loss passes;
    ``benchmarks/worstcase_cost.py`` prints it against one SalUn run and one retrain.
    * grouped selection only: ``per_unit`` (examples per group in the loop; None = all), ``baseline``
      (``"none"`` = the paper's raw loss, ``"original"`` = the gap to the original's loss); diffusion only:
      ``timesteps`` (fixed (t, ε) draws per example in the upper loss; the reference uses 10). The
      prompt-wise runner (``selection.prompts``) changes some defaults; its docstring lists them.
    """

    lower: str = "auto"
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
    per_unit: int | None = None
    baseline: str = "none"
    timesteps: int = 10

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
        if self.per_unit is not None and self.per_unit < 1:
            raise ConfigError(f"select.per_unit must be >= 1 (or null for all), got {self.per_unit}")
        if self.baseline not in ("none", "original"):
            raise ConfigError(f"select.baseline must be 'none' or 'original', got {self.baseline!r}")
        if self.timesteps < 1:
            raise ConfigError(f"select.timesteps must be >= 1, got {self.timesteps}")


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
    best_iter: int
    seconds: float
    lower_steps: int
    config: dict[str, Any]
    unit_losses: list[list[float]] = field(default_factory=list)  # grouped: per iteration, per unit
    unit_names: list[str] = field(default_factory=list)  # names of the chosen units, where known
    pool_names: list[str] = field(default_factory=list)  # names of every unit, where known


def resolve_size(size: int | float | str, n: int, what: str = "pool") -> int:
    """m from a count (``10``, ``"10"``), a fraction (``0.1``) or a percent (``"10%"``); 1 <= m < n."""
    raw, hint = size, "a count, a fraction in (0, 1) or a percent like '10%'"
    if isinstance(size, str):
        pct = size.strip().endswith("%")
        try:
            size = _parse_number(size)
        except ValueError:
            raise ConfigError(f"size must be {hint}, got {raw!r}") from None
        if pct and not 0 < size < 1:
            raise ConfigError(f"size {raw!r}: a percent must lie strictly between 0% and 100%")
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise ConfigError(f"size must be {hint}, got {raw!r}")
    if isinstance(size, int) or (size.is_integer() and size >= 1):
        m = int(size)
    elif 0 < size < 1:
        m = int(round(size * n))
    else:
        raise ConfigError(f"size {raw!r} must be {hint}")
    if not 1 <= m < n:
        raise ConfigError(f"size {raw!r} gives m = {m} but the {what} has {n} units: choose 1 <= m < {n}")
    return m


def _parse_number(text: str) -> int | float:
    """``"10%"`` -> 0.1, ``"144"`` -> 144, ``"0.1"`` -> 0.1; ValueError otherwise."""
    s = text.strip()
    if s.endswith("%"):
        return float(s[:-1]) / 100.0
    return int(s) if s.lstrip("+-").isdigit() else float(s)


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

    def __init__(
        self, task: SelectionTask, cfg: WorstCaseConfig | None = None, grouped: bool = False
    ) -> None:
        """``grouped``: units are groups of examples (classes, prompts); ``lower="auto"`` then means ft
        (esd for the diffusion family, the lower level of the reference's prompt-wise selection)."""
        self.task = task
        cfg = cfg or WorstCaseConfig()
        cfg.check()
        if cfg.lower == "auto":
            if task.family.prompt_units:
                auto = "esd"
            else:
                auto = "ft" if grouped or task.model_factory is None else "retrain"
            cfg = replace(cfg, lower=auto)
        self.cfg = cfg
        self._seed = task.seed if cfg.seed is None else cfg.seed
        LowerLevel(task, cfg, self._seed)  # validate the lower level before any work

    def _units(self, groups: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit ids, unit index of each pool example)."""
        n_ex = len(self.task.pool)
        if groups is None:
            return self.task.pool.ids.clone(), torch.arange(n_ex)
        if len(groups) != n_ex:
            raise UnlearnkitError(f"groups has {len(groups)} entries for a pool of {n_ex} examples")
        return torch.unique(torch.as_tensor(groups), return_inverse=True)

    def _subsample(self, inverse: torch.Tensor, n: int) -> tuple[SelectionTask, torch.Tensor]:
        """(task on at most ``per_unit`` seeded examples of each unit, their unit indices)."""
        k = self.cfg.per_unit
        if k is None or int(torch.bincount(inverse, minlength=n).max()) <= k:
            return self.task, inverse
        g = torch.Generator().manual_seed(self._seed)
        order = torch.randperm(len(inverse), generator=g)
        keep = torch.zeros(len(inverse), dtype=torch.bool)
        seen = torch.zeros(n, dtype=torch.long)
        for p in order.tolist():
            u = int(inverse[p])
            if seen[u] < k:
                keep[p], seen[u] = True, seen[u] + 1
        pos = keep.nonzero().squeeze(1)
        return replace(self.task, pool=self.task.pool.take(pos)), inverse[pos]

    def _init(self, n: int, m: int) -> torch.Tensor:
        if self.cfg.init == "uniform":
            return torch.full((n,), m / n, dtype=torch.float64)
        w = torch.zeros(n, dtype=torch.float64)  # the reference: a random forget set's indicator
        w[torch.randperm(n, generator=torch.Generator().manual_seed(self._seed))[:m]] = 1.0
        return w

    def run(self, size: int | float | str, groups: torch.Tensor | None = None) -> SelectionResult:
        """Select the worst-case m units; ``groups[i]`` is the unit of pool example i (None = itself).

        Iterations 0..K−1 run the lower level at w_t (at top-m(w_t) for a binarised lower level) and take
        the upper step; iteration K runs it once more at the final top-m set. The trajectory holds
        F(w_t) = Σ w_i ℓ_i(θ*(w_t)) + γ‖w_t‖² for the w the lower level saw (ℓ_i − ℓ_i(θ_o) with
        ``baseline="original"``).
        """
        c = self.cfg
        t0 = time.perf_counter()
        unit_ids, inverse_all = self._units(groups)
        n = len(unit_ids)
        m = resolve_size(size, n, "pool" if groups is None else "set of groups")
        task, inverse = self._subsample(inverse_all, n)
        lower = LowerLevel(task, c, self._seed)
        base = per_unit_losses(task, task.original, inverse, n) if c.baseline == "original" else 0.0
        w = self._init(n, m)
        traj: list[float] = []
        fl: list[float] = []
        per_unit: list[list[float]] = []
        best: tuple[float, int, torch.Tensor] | None = None
        for it in range(c.iters + 1):
            w_eval = top_m_indicator(w, m) if not lower.weighted or it == c.iters else w
            losses = per_unit_losses(task, lower(w_eval[inverse], it), inverse, n) - base
            if groups is not None:
                per_unit.append([float(v) for v in losses])
            traj.append(float((w_eval * losses).sum() + c.gamma * (w_eval * w_eval).sum()))
            top = top_m_indicator(w_eval, m).bool()
            fl.append(float(losses[top].mean()))
            if bool(((w_eval == 0) | (w_eval == 1)).all()) and (best is None or fl[-1] < best[0]):
                best = (fl[-1], it, top)  # a binary w: fl is the true objective of that set
            if it == c.iters:
                break
            g = losses + 2.0 * c.gamma * w  # ∂F/∂w, the paper's first-order hypergradient
            eta = c.w_lr if c.w_lr is not None else c.step / _band_scale(g, m)
            w = project_capped_simplex(w - eta * g, m)
            if c.binarize_every and (it + 1) % c.binarize_every == 0:
                w = top_m_indicator(w, m)
        assert best is not None  # the last iteration is always binary
        chosen = best[2]
        return SelectionResult(
            ids=sorted(int(i) for i in self.task.pool.ids[chosen[inverse_all]].tolist()),
            units=sorted(int(u) for u in unit_ids[chosen].tolist()),
            size=m,
            weights=[float(x) for x in w],
            trajectory=traj,
            forget_loss=fl,
            best_iter=best[1],
            seconds=time.perf_counter() - t0,
            lower_steps=lower.steps,
            config=asdict(c),
            unit_losses=per_unit,
        )


def select_worst_case(
    task: SelectionTask, size: int | float | str, cfg: WorstCaseConfig | None = None
) -> SelectionResult:
    """Data-wise worst-case forget set: one unit per pool example."""
    return WorstCaseSelector(task, cfg).run(size)


def select_worst_groups(
    task: SelectionTask, size: int | float | str, groups: torch.Tensor, cfg: WorstCaseConfig | None = None
) -> SelectionResult:
    """Group-wise selection: ``groups[i]`` is the unit of pool example i; m counts groups. The hook for
    prompt-wise (diffusion: prompt ids) and question- or author-wise (text) worst-case selection."""
    return WorstCaseSelector(task, cfg, grouped=True).run(size, groups=groups)


def select_worst_classes(
    task: SelectionTask, size: int | float | str, cfg: WorstCaseConfig | None = None
) -> SelectionResult:
    """Class-wise (paper §4.2): w over classes, a class's loss = the mean loss of its pool examples."""
    return select_worst_groups(task, size, task.pool.labels, cfg)
