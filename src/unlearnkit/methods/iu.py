"""Influence unlearning (IU): one Newton step that removes D_f, with a WoodFisher inverse Hessian.

Influence functions (Koh & Liang, ICML 2017) estimate the weights a model would have without some
training points; Izzo et al. (AISTATS 2021) use the resulting Newton step to unlearn, and Jia et al.
(NeurIPS 2023, "Model Sparsity Can Simplify Machine Unlearning") run it as the IU baseline, with the
Hessian replaced by the WoodFisher empirical Fisher (Singh & Alistarh, NeurIPS 2020).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from unlearnkit.data.examples import Batch, ExampleSet
from unlearnkit.engine.loop import FitResult
from unlearnkit.errors import ConfigError, UnlearnkitError
from unlearnkit.families.base import Family
from unlearnkit.methods.base import Method, MethodConfig, Task
from unlearnkit.registry import register_method

SOLVERS = ("woodbury", "reference")
SAMPLE_ORDERS = ("random", "first")


@dataclass
class IUConfig(MethodConfig):
    """Options of IU (single-shot: ``epochs``/``lr``/optimizer settings are not used).

    ``alpha``: scale of the step, θ ← θ_o + α·F⁻¹v. α = 1 is the plain Newton step; Jia et al. search
    α in about [1, 20] (appendix; the README leaves it to ``--alpha``), so the default 10 sits in that
    range. Presets tune it.
    ``damping``: λ of F = λI + (1/n)Σ g_i g_iᵀ. 1.0 matches the reference, whose recursion starts from
    the identity and divides by N + gᵀo, i.e. works with I + (1/N)Σ g gᵀ.
    ``num_samples``: n, the number of per-example retain gradients in the Fisher (reference: N = 1000).
    ``solver``: ``"woodbury"`` computes F⁻¹v exactly with the Woodbury identity (the paper's WoodFisher
    estimate); ``"reference"`` reproduces the recursion of the reference ``Wfisher.py``, an
    approximation (see :func:`reference_ihvp`).
    ``sample_order``: which retain examples enter the Fisher: a seeded random subset (``"random"``) or
    the first ones in dataset order (``"first"``, what the reference's unshuffled loader does).
    ``chunk_size``: examples per vmapped per-example-gradient call.
    ``max_memory_gb``: the Woodbury solver stores n×P gradients; it refuses to start above this size.
    """

    epochs: int = 0
    alpha: float = 10.0
    damping: float = 1.0
    num_samples: int = 1000
    solver: str = "woodbury"
    sample_order: str = "random"
    chunk_size: int = 32
    max_memory_gb: float = 4.0

    def check(self) -> None:
        super().check()
        if self.solver not in SOLVERS:
            raise ConfigError(f"method.solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.sample_order not in SAMPLE_ORDERS:
            raise ConfigError(
                f"method.sample_order must be one of {SAMPLE_ORDERS}, got {self.sample_order!r}"
            )
        if not self.damping > 0:
            raise ConfigError(f"method.damping must be > 0, got {self.damping}")
        if not self.alpha > 0:  # a negative scale would step towards the forget set, not away from it
            raise ConfigError(f"method.alpha must be > 0, got {self.alpha}")
        if self.num_samples < 1:
            raise ConfigError(f"method.num_samples must be >= 1, got {self.num_samples}")
        if self.chunk_size < 1:
            raise ConfigError(f"method.chunk_size must be >= 1, got {self.chunk_size}")
        if not self.max_memory_gb > 0:
            raise ConfigError(f"method.max_memory_gb must be > 0, got {self.max_memory_gb}")


@register_method("iu")
class IU(Method):
    """IU: θ ← θ_o + α·F⁻¹v, v = (N_f/N)(ḡ_f − ḡ_r), F = λI + (1/n)Σ g_i g_iᵀ over retain examples.

    ḡ_f, ḡ_r are the gradients of the mean loss on D_f and D_r at θ_o; N = N_f + N_r. At a minimum of
    the full training loss, v = −∇ℓ(θ_o; D_r), so α = 1 with F = H_r is the Newton step towards the
    minimiser of the retain loss (the influence-function estimate of removing D_f; Koh & Liang 2017,
    Izzo et al. 2021). The reference weighting is the same: g_f = Σ_f ∇ℓ/N and g_r = N_f Σ_r ∇ℓ/(N·N_r).
    F⁻¹v is computed exactly by the Woodbury identity, with G = [g_1 … g_n] (P×n):
        F⁻¹v = (1/λ)(v − G(nλI_n + GᵀG)⁻¹Gᵀv).
    All gradients are taken in eval mode (batch norm uses its running statistics) over the parameters
    that require grad, in ``named_parameters`` order; per-example gradients use ``torch.func``. With a
    weight mask only masked-in entries move.
    """

    paper = (
        "Koh & Liang, ICML 2017; Izzo et al., AISTATS 2021; IU baseline of Jia et al., NeurIPS 2023: "
        "θ ← θ_o + α·F⁻¹(g_f − g_r), WoodFisher F"
    )
    families = ("vision",)
    Config = IUConfig

    def run(self, task: Task) -> FitResult:
        self.task = task
        self.cfg.check()
        t0 = time.perf_counter()
        model, family = task.model, task.family
        dev = task.engine.device
        model.to(dev)
        was_training = model.training
        model.eval()
        try:
            self.mask = self.build_mask(task)
            if self.mask is not None:
                self.mask.attach(model)  # validates names and shapes, snapshots the frozen entries
            bs = self.batch_sizes(task)
            forget, retain = task.split.forget, task.split.retain
            n_f, n_r = len(forget), len(retain)
            g_f = mean_gradient(model, family, forget, bs["forget"], dev)
            g_r = mean_gradient(model, family, retain, bs["retain"], dev)
            v = (n_f / (n_f + n_r)) * (g_f - g_r)
            step, n_used = self._inverse_fisher_vector(model, family, retain, v, task.seed)
            if not torch.isfinite(step).all():
                raise UnlearnkitError(
                    "the IU step F⁻¹v is not finite; raise method.damping "
                    f"(now {self.cfg.damping}) or lower method.alpha (now {self.cfg.alpha})"
                )
            apply_step(model, self.cfg.alpha * step, self.mask)
        finally:
            model.train(was_training)
        model.eval()
        rec = {
            "epoch": 0,
            "step": 0,
            "phase": "influence",
            "loss": 0.0,
            "v_norm": float(v.norm()),
            "step_norm": float(self.cfg.alpha * step.norm()),
            "fisher_samples": n_used,
        }
        return FitResult(steps=0, seconds=time.perf_counter() - t0, history=[rec])

    def _inverse_fisher_vector(
        self, model: nn.Module, family: Family, retain: ExampleSet, v: torch.Tensor, seed: int
    ) -> tuple[torch.Tensor, int]:
        cfg = self.cfg
        n_avail = len(retain)
        if cfg.solver == "woodbury":
            n = min(cfg.num_samples, n_avail)
            need = v.numel() * n * 4
            if need > cfg.max_memory_gb * 1e9:
                raise UnlearnkitError(
                    f"IU's Woodbury solver stores {n} per-example gradients of {v.numel():,} parameters "
                    f"({need / 1e9:.1f} GB), more than method.max_memory_gb={cfg.max_memory_gb}; lower "
                    f"method.num_samples (now {cfg.num_samples}) to at most "
                    f"{max(1, int(cfg.max_memory_gb * 1e9 // (v.numel() * 4)))}, raise method.max_memory_gb, "
                    "or use method.solver=reference (approximate, constant memory)"
                )
        else:
            n = min(cfg.num_samples + 2, n_avail)  # the reference stops after index N + 1
        subset = retain.take(_sample_positions(n_avail, n, cfg.sample_order, seed))
        rows = per_example_gradients(model, family, subset, cfg.chunk_size, v.device)
        if cfg.solver == "woodbury":
            G = torch.cat(list(rows), dim=0)
            return woodbury_ihvp(G, v, cfg.damping), n
        return reference_ihvp(rows, v, cfg.num_samples, cfg.damping), n


# -- building blocks (public so tests and other methods can use them) -------------------------------


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Parameters that require grad, in ``named_parameters`` order: the coordinates of every vector here."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def mean_gradient(
    model: nn.Module, family: Family, data: ExampleSet, batch_size: int, device: torch.device
) -> torch.Tensor:
    """∇θ of the mean per-example loss over ``data`` at the current weights, flattened (float32)."""
    params = [p for _, p in trainable(model)]
    total = torch.zeros(sum(p.numel() for p in params), device=device)
    n = len(data)
    for batch in data.loader(batch_size):
        batch = _to(batch, device)
        loss = family.per_example_loss(model, batch).sum() / n
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        total += torch.cat(
            [
                (torch.zeros_like(p) if g is None else g).reshape(-1).float()
                for g, p in zip(grads, params, strict=True)
            ]
        )
    return total


class _Stateless:
    """Stands in for a module inside family code: calls it with given parameters and buffers."""

    def __init__(self, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        self._module = module
        self._state = state

    def __call__(self, *args, **kwargs):
        return functional_call(self._module, self._state, args, kwargs)

    def __getattr__(self, name: str):
        return getattr(self._module, name)


def per_example_gradients(
    model: nn.Module, family: Family, data: ExampleSet, chunk_size: int, device: torch.device
) -> Iterator[torch.Tensor]:
    """Yield ``[B, P]`` float32 blocks of per-example loss gradients, ``chunk_size`` examples at a time.

    Uses ``vmap(grad(·))`` over a functional call of ``model`` with its current weights, so the model's
    mode (eval, for batch-norm running statistics) is whatever the caller set.
    """
    named = trainable(model)
    names = [n for n, _ in named]
    params = {n: p.detach() for n, p in named}
    fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    fixed |= {n: b.detach() for n, b in model.named_buffers()}

    def loss_one(p: dict[str, torch.Tensor], example: Batch) -> torch.Tensor:
        batch = {k: v.unsqueeze(0) for k, v in example.items()}
        return family.per_example_loss(_Stateless(model, p | fixed), batch).mean()

    per_example = vmap(grad(loss_one), in_dims=(None, 0))
    for batch in data.loader(chunk_size):
        batch = _to(batch, device)
        grads = per_example(params, batch)
        b = len(batch["id"])
        yield torch.cat([grads[n].reshape(b, -1).float() for n in names], dim=1)


def woodbury_ihvp(G: torch.Tensor, v: torch.Tensor, damping: float) -> torch.Tensor:
    """Exact F⁻¹v for F = λI + (1/n)Σ g_i g_iᵀ, with ``G`` ``[n, P]`` holding one gradient g_i per row.

    Woodbury: F⁻¹v = (1/λ)(v − Gᵀ(nλI_n + GGᵀ)⁻¹Gv) (the docstring of :class:`IU` writes G as columns);
    the n×n system is solved in float64.
    """
    n = G.shape[0]
    gram = (G @ G.T).double()
    gram.diagonal().add_(n * damping)
    coef = torch.linalg.solve(gram, (G @ v).double())
    return (v - G.T @ coef.to(G.dtype)) / damping


def reference_ihvp(
    rows: Iterator[torch.Tensor], v: torch.Tensor, N: int, damping: float = 1.0
) -> torch.Tensor:
    """The recursion of the reference ``Wfisher.py::woodfisher`` (an approximation of F⁻¹v).

    With k = v/λ, the first gradient sets o = g_1/λ; every further gradient g updates
        k ← k − (k·g)/(N + o·g) · o,    o ← o − (o·g)/(N + o·g) · o.
    (λ = 1 is the reference.) Exact Sherman–Morrison would need o = F_{i−1}⁻¹g for every new g; here o
    stays parallel to g_1, so the result is v/λ minus a multiple of g_1: a crude approximation.
    """
    k = v / damping
    o: torch.Tensor | None = None
    for block in rows:
        for g in block:
            if o is None:
                o = g / damping
                continue
            tmp = torch.dot(o, g)
            k = k - (torch.dot(k, g) / (N + tmp)) * o
            o = o - (tmp / (N + tmp)) * o
    return k


@torch.no_grad()
def apply_step(model: nn.Module, step: torch.Tensor, mask=None) -> None:
    """θ ← θ + step over the trainable parameters; with a (attached) mask only masked-in entries move."""
    offset = 0
    for name, p in trainable(model):
        k = p.numel()
        d = step[offset : offset + k].view_as(p).to(p.dtype)
        if mask is not None and name in mask.masks:
            d = d * mask.masks[name].to(d.device)
        p.add_(d)
        offset += k
    if offset != step.numel():
        raise UnlearnkitError(
            f"IU step has {step.numel()} entries but the model has {offset} trainable weights"
        )
    if mask is not None:
        mask.restore()


def _sample_positions(n_avail: int, n: int, order: str, seed: int) -> torch.Tensor:
    if order == "first":
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    return torch.sort(torch.randperm(n_avail, generator=gen)[:n]).values


def _to(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device) for k, v in batch.items()}
