"""Optimizer and learning-rate schedule construction from a method's config."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from unlearnkit.errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw", "signsgd")
SCHEDULES = ("constant", "cosine", "step")


@dataclass
class OptimSpec:
    """How to optimise: shared by every method config (these fields appear in each preset)."""

    epochs: int = 10
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scheduler: str = "constant"
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    max_grad_norm: float | None = None

    def check(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.scheduler not in SCHEDULES:
            raise ConfigError(f"scheduler must be one of {SCHEDULES}, got {self.scheduler!r}")
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        if not self.lr >= 0 or math.isinf(self.lr):
            raise ConfigError(f"lr must be a finite number >= 0, got {self.lr}")
        if not 0 <= self.momentum < 1:  # SGD's; 1 or more never forgets a gradient and diverges
            raise ConfigError(f"momentum must lie in [0, 1), got {self.momentum}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(f"max_grad_norm must be > 0 (or null: no clipping), got {self.max_grad_norm}")


class SignSGD(torch.optim.Optimizer):
    """θ ← θ − lr · sign(∇θ) (the lower-level optimizer of Unlearn-WorstCase); weight decay is added
    to the gradient before the sign when set."""

    def __init__(self, params, lr: float = 0.01, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if group["weight_decay"] == 0 else p.grad + group["weight_decay"] * p
                p.add_(torch.sign(g), alpha=-group["lr"])
        return loss


def build_optimizer(params, spec: OptimSpec) -> torch.optim.Optimizer:
    spec.check()
    params = [p for p in params if p.requires_grad]
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return SignSGD(params, lr=spec.lr, weight_decay=spec.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, spec: OptimSpec) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-epoch schedule: constant, cosine to 0, or ×0.1 at each milestone (fractions of the run)."""
    epochs = max(spec.epochs, 1)

    def factor(epoch: int) -> float:
        if spec.scheduler == "cosine":
            return 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        if spec.scheduler == "step":
            return 0.1 ** sum(epoch >= m * epochs for m in spec.milestones)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
