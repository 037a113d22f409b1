"""Fine-tuning (FT) on the retain set: catastrophic forgetting of D_f."""

from __future__ import annotations

from dataclasses import dataclass

from unlearnkit.engine.loop import Phase
from unlearnkit.methods.base import Method, MethodConfig, Task
from unlearnkit.registry import register_method


@dataclass
class FTConfig(MethodConfig):
    """SalUn/Unlearn-Sparse defaults: SGD lr 0.01, 10 epochs (momentum 0.9, wd 5e-4)."""

    epochs: int = 10
    lr: float = 0.01


@register_method("ft")
class FT(Method):
    """FT: minimise ℓ(θ; D_r) starting from θ_o (Warnecke et al., 2023; baseline in SalUn Table 1)."""

    retain_only = True
    epochwise = True
    paper = "Warnecke et al., NDSS 2023; min_θ E_{D_r}[ℓ(θ; x, y)] from θ_o"
    Config = FTConfig

    def streams(self, task: Task):
        return {"retain": task.split.retain}

    def phases(self, epoch: int) -> list[Phase]:
        return [Phase("retain", ("retain",), lambda b, ctx: (self.mean_loss(b["retain"]), {}))]
