"""The lower level θ*(w) of the worst-case selection, and the per-unit losses the upper level reads.

Three kinds (Unlearn-WorstCase reference, ``classification.md`` §4.1 and §4.3):

* weighted, ``retrain`` / ``ft`` (reference ``w_retrain`` / ``w_FT``): minimise the batch mean of
  (1 − w_i)·ℓ_i(θ) over the whole pool, from a fresh initialisation (retrain) or from the original model
  (ft). The optimizer is sign-SGD θ ← θ − lr·sign(∇θ) (the paper's choice; weight decay and momentum are
  ignored there) or a plain one (``sgd``, ``adam``, ``adamw``, or ``plain`` = the original's recipe).
  Warm start (retrain only): after the first lower level, each one continues from the previous θ for
  ``lower_epochs`` instead of re-initialising and training ``first_epochs`` again.
* binarised, any registered method (``rl``, ``ga``, ``salun``, ...; reference ``w_RL``): the method runs
  from the original on forget = the examples of the current top-m units, retain = the rest, with its
  options from the suite (``method_specs``), ``epochs = lower_epochs`` and ``lower_options`` on top.
* forget-weighted, ``esd`` (diffusion; reference ``prompt-wise/.../esd.py::SignESD``, which multiplies each
  prompt's ESD loss by its weight): from the original, minimise the batch mean of w_i·ℓ^ESD_i(θ) over the
  pool, with ℓ^ESD_i = ‖ε_θ(x_t, c_i, t) − [ε_θo(x_t, ∅, t) − η(ε_θo(x_t, c_i, t) − ε_θo(x_t, ∅, t))]‖²
  (ESD Eq. 3–4, :mod:`unlearnkit.methods.esd`); ESD's options come from the suite's ``esd`` method spec
  and ``lower_options``, its optimizer is sign-SGD at ``lower_lr`` (the reference's ``SignESD``) or, with
  ``optimizer=plain``, ESD's own (Adam at the preset's lr).

Everything goes through ``Engine.fit``, ``Method.run`` and ``family.per_example_loss``; the ESD lower level
reuses the registered ESD method's teacher machinery (:func:`esd_per_example_loss`) rather than a copy.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from unlearnkit.data.splits import Split
from unlearnkit.engine.loop import Phase
from unlearnkit.engine.optim import OptimSpec
from unlearnkit.errors import ConfigError, UnlearnkitError
from unlearnkit.experiment import build_method
from unlearnkit.families.base import Task
from unlearnkit.methods.esd import esd_target
from unlearnkit.registry import get_method, list_names, supports

if TYPE_CHECKING:
    from unlearnkit.selection.worstcase import SelectionTask, WorstCaseConfig

WEIGHTED_LOWER = ("retrain", "ft")
FORGET_WEIGHTED_LOWER = ("esd",)


class LowerLevel:
    """Callable ``(w per example, iteration) -> unlearned model``; counts the optimizer steps it took."""

    def __init__(self, task: SelectionTask, cfg: WorstCaseConfig, seed: int) -> None:
        self.task, self.cfg, self.seed = task, cfg, seed
        self.steps = 0
        self.weighted = cfg.lower in WEIGHTED_LOWER + FORGET_WEIGHTED_LOWER
        self._warm: nn.Module | None = None
        self._sorted_ids, self._order = torch.sort(task.pool.ids)
        self._check()

    def _check(self) -> None:
        name, family = self.cfg.lower, self.task.family.name or "vision"
        if name in FORGET_WEIGHTED_LOWER:
            if not self.task.family.prompt_units:
                raise ConfigError(
                    f"select.lower={name} is the lower level of text-to-image prompts; this task's family "
                    f"is {family!r}"
                )
            build_method(self.method_spec(), family)
            return
        if self.weighted:
            if name == "retrain" and self.task.model_factory is None:
                raise UnlearnkitError(
                    "the retrain lower level needs a model factory (a fresh initialisation)"
                )
            return
        usable = [n for n in list_names("method") if supports(get_method(n), family)]
        if name not in usable:
            choices = ", ".join(sorted(set(WEIGHTED_LOWER) | set(usable)))
            raise ConfigError(
                f"unknown lower-level method {name!r} for select.lower; choose one of: {choices}"
            )
        build_method(self.method_spec(), family)  # validate its options before any work

    def method_spec(self) -> dict[str, Any]:
        spec = dict(self.task.method_specs.get(self.cfg.lower, {})) | {"name": self.cfg.lower}
        return spec | {"epochs": self.cfg.lower_epochs} | dict(self.cfg.lower_options)

    def __call__(self, w_ex: torch.Tensor, it: int) -> nn.Module:
        if self.cfg.lower in FORGET_WEIGHTED_LOWER:
            return self._esd(w_ex.float(), it)
        return self._weighted(w_ex.float(), it) if self.weighted else self._method(w_ex > 0.5, it)

    # -- weighted: Σ (1 − w_i) ℓ_i(θ) ------------------------------------------------------------------
    def _optim(self, epochs: int) -> OptimSpec:
        c, ts = self.cfg, self.task.train_spec or OptimSpec()
        if c.optimizer == "signsgd":
            return OptimSpec(epochs=epochs, lr=c.lower_lr, optimizer="signsgd", weight_decay=0.0)
        opt = ts.optimizer if c.optimizer == "plain" else c.optimizer
        return OptimSpec(epochs, c.lower_lr, opt, ts.momentum, ts.weight_decay)

    def _positions(self, ids: torch.Tensor) -> torch.Tensor:
        sid = self._sorted_ids.to(ids.device)
        return self._order.to(ids.device)[torch.searchsorted(sid, ids)]

    def _weighted(self, w_ex: torch.Tensor, it: int) -> nn.Module:
        task, c = self.task, self.cfg
        if c.lower == "ft":
            model, epochs = copy.deepcopy(task.original), c.lower_epochs
        elif c.warm_start and self._warm is not None:
            model, epochs = self._warm, c.lower_epochs
        else:
            model, epochs = task.model_factory(), c.first_epochs  # type: ignore[misc]
        keep = (1.0 - w_ex).to(task.engine.device)

        def loss(b, ctx):
            batch = b["pool"]
            wts = keep[self._positions(batch["id"])]
            return (wts * task.losses(model, batch)).sum() / len(wts), {}

        fit = task.engine.fit(
            model,
            {"pool": task.pool},
            lambda e: [Phase("pool", ("pool",), loss)],
            self._optim(epochs),
            batch_sizes={"pool": c.batch_size or task.engine.cfg.batch_size},
            desc=f"select-{c.lower}",
            seed=self.seed + it,
        )
        self.steps += fit.steps
        if c.lower == "retrain" and c.warm_start:
            self._warm = model
        return model

    # -- forget-weighted ESD: Σ w_i ℓ^ESD_i(θ) from the original -----------------------------------------
    def _esd(self, w_ex: torch.Tensor, it: int) -> nn.Module:
        task, c = self.task, self.cfg
        method = build_method(self.method_spec(), "diffusion")
        # ESD reads only the model in prepare (its data is the pool stream below): no split is needed.
        t = Task(task.family, copy.deepcopy(task.original), None, task.engine, self.seed + it)  # type: ignore[arg-type]
        method.task = t
        t.model.to(task.engine.device)
        method.prepare(t)
        weight = w_ex.to(task.engine.device)

        def loss(b, ctx):
            batch = b["pool"]
            per_ex = esd_per_example_loss(method, batch, ctx.generator)
            return (weight[self._positions(batch["id"])] * per_ex).sum() / len(per_ex), {}

        if c.optimizer == "plain":  # ESD's own recipe (Adam at the preset's lr)
            spec = OptimSpec(c.lower_epochs, method.cfg.lr, method.cfg.optimizer, 0.0, 0.0)
        else:
            spec = self._optim(c.lower_epochs)
        fit = task.engine.fit(
            t.model,
            {"pool": task.pool},
            lambda e: [Phase("esd", ("pool",), loss)],
            spec,
            batch_sizes={"pool": c.batch_size or method.cfg.batch_size or task.engine.cfg.batch_size},
            desc="select-esd",
            seed=self.seed + it,
        )
        method.finalize(t)
        self.steps += fit.steps
        return t.model

    # -- binarised: a registered method on forget = top-m ------------------------------------------------
    def _method(self, forget_ex: torch.Tensor, it: int) -> nn.Module:
        task = self.task
        method = build_method(self.method_spec(), task.family.name or "vision")
        forget = task.pool.take(forget_ex.nonzero().squeeze(1))
        retain = task.pool.take((~forget_ex).nonzero().squeeze(1))
        split = Split(forget, retain, task.holdout, "worstcase-lower")  # type: ignore[arg-type]
        t = Task(
            task.family,
            copy.deepcopy(task.original),
            split,
            task.engine,
            self.seed + it,
            task.model_factory,
            task.train_spec,
        )
        self.steps += method.run(t).steps
        return t.model


def esd_per_example_loss(method, batch, generator: torch.Generator) -> torch.Tensor:
    """ℓ^ESD_i per example (mean over pixels): :meth:`unlearnkit.methods.esd.ESD.loss` without the batch
    mean, on a prepared ESD method (its teacher swap, x_t source, null and concept prompts). Its batch mean
    is ESD's loss; ``tests/test_worstcase_prompts.py`` checks that the two agree."""
    ids = batch["input_ids"] if method._concept is None else method._concept.expand(len(batch["id"]), -1)
    ids = ids.to(batch["x"].device)
    with torch.no_grad(), method.original_weights() as teacher:
        was = teacher.training
        teacher.eval()
        x_t, t = method._xt(batch, ids, generator, teacher)
        null = method._null.to(ids.device).expand(len(ids), -1)
        eps_u, eps_c = teacher(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([null, ids])).chunk(2)
        teacher.train(was)
        target = esd_target(eps_u, eps_c, method.cfg.eta)
    pred = method.model(x_t, t, ids)
    return (pred.float() - target.float()).pow(2).flatten(1).mean(1)


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
    per_ex = torch.cat(out).double()
    sums = torch.zeros(n_units, dtype=torch.float64).index_add_(0, inverse, per_ex)
    return sums / torch.bincount(inverse, minlength=n_units).double()
