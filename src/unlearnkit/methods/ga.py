"""Gradient ascent (GA) on the forget set, written once over any family's per-example loss."""

from __future__ import annotations

from dataclasses import dataclass

from unlearnkit.engine.loop import Phase
from unlearnkit.methods.base import Method, MethodConfig, Task
from unlearnkit.registry import register_method


@dataclass
class GAConfig(MethodConfig):
    """Unlearn-Sparse README: lr 1e-4, 5 epochs; authors suggest 5e-4–1e-3 when UA does not move."""

    epochs: int = 5
    lr: float = 1e-4


@register_method("ga")
class GA(Method):
    """GA: minimise −ℓ(θ; D_f), i.e. ascend the forget loss (Thudi et al., 2022)."""

    paper = "Thudi et al., EuroS&P 2022; min_θ −E_{D_f}[ℓ(θ; x, y)]"
    epochwise = True
    ascent_cliff = True
    Config = GAConfig

    def streams(self, task: Task):
        return {"forget": task.split.forget}

    def phases(self, epoch: int) -> list[Phase]:
        return [Phase("forget", ("forget",), lambda b, ctx: (-self.mean_loss(b["forget"]), {}))]
