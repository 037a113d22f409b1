"""ℓ1-sparse unlearning: fine-tune on D_r with a decaying ℓ1 penalty (Jia et al., NeurIPS 2023)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unlearnkit.engine.loop import Phase, StepContext
from unlearnkit.methods.base import Method, MethodConfig, Task
from unlearnkit.registry import register_method


@dataclass
class L1SparseConfig(MethodConfig):
    """``alpha`` is γ of the paper; it decays linearly to 0 over ``epochs - no_l1_epochs`` epochs
    (γ_t = γ·(1 − t/(T − no_l1_epochs)), as in the reference ``FT_l1``). lr 0.01, 10 epochs."""

    epochs: int = 10
    lr: float = 0.01
    alpha: float = 5e-4
    no_l1_epochs: int = 0
    non_negative = ("alpha", "no_l1_epochs")  # γ < 0 would reward large weights


@register_method("l1_sparse")
class L1Sparse(Method):
    """ℓ1-sparse: min_θ ℓ(θ; D_r) + γ_t‖θ‖₁ over all parameters (Jia et al., NeurIPS 2023)."""

    retain_only = True
    paper = (
        "Jia et al., 'Model Sparsity Can Simplify Machine Unlearning', NeurIPS 2023: "
        "sparsity-aware unlearning, min ℓ(θ; D_r) + γ_t‖θ‖₁"
    )
    Config = L1SparseConfig

    def streams(self, task: Task):
        return {"retain": task.split.retain}

    def gamma(self, epoch: int) -> float:
        span = self.cfg.epochs - self.cfg.no_l1_epochs
        if span <= 0 or epoch >= span:
            return 0.0
        return self.cfg.alpha * (1 - epoch / span)

    def loss(self, b, ctx: StepContext):
        ce = self.mean_loss(b["retain"])
        g = self.gamma(ctx.epoch)
        if g == 0:
            return ce, {"gamma": 0.0}
        l1 = torch.stack([p.abs().sum() for p in self.model.parameters()]).sum()
        return ce + g * l1, {"gamma": g, "l1": float(l1.detach())}

    def phases(self, epoch: int) -> list[Phase]:
        return [Phase("retain", ("retain",), self.loss)]
