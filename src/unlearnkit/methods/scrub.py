"""SCRUB: teacher–student min-max distillation.

Kurmanji et al., "Towards Unbounded Machine Unlearning", NeurIPS 2023.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from unlearnkit.data.examples import Batch
from unlearnkit.engine.loop import Phase, StepContext
from unlearnkit.errors import ConfigError
from unlearnkit.methods.base import Method, MethodConfig, Task, frozen_copy
from unlearnkit.registry import register_method


@dataclass
class SCRUBConfig(MethodConfig):
    """SCRUB options; defaults are the paper's *small-scale* setting as coded in the authors' notebook
    (``small_scale_unlearning.ipynb``): Adam lr 5e-4, weight decay 0.1, γ = 1, α = 0.5, T = 2, 10 epochs,
    3 max epochs, retain batch 32, forget batch 64, and the notebook's lr decay ×0.1 at epochs 5, 8 and 9
    (``lr_decay_epochs=[5, 8, 9]``, i.e. ``scheduler: step`` with milestones 0.5/0.8/0.9 of 10 epochs).

    The large-scale setting (ResNet/CIFAR) is: ``optimizer: sgd``, lr 5e-4, momentum 0.9, wd 5e-4,
    γ 0.99, α 0.001, T 4, 3 epochs, msteps 2, forget batch 512, retain batch 256.

    ``gamma``: weight of the retain cross-entropy; ``alpha``: weight of the retain distillation term;
    ``kd_T``: distillation temperature; ``msteps``: number of epochs (the first ones) that start with a
    max pass over the forget set.
    """

    epochs: int = 10
    lr: float = 5e-4
    optimizer: str = "adam"
    weight_decay: float = 0.1
    scheduler: str = "step"
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.8, 0.9])
    batch_size: int | None = None  # the batch-size rule: methods/base.py MethodConfig
    forget_batch_size: int | None = None
    gamma: float = 1.0
    alpha: float = 0.5
    kd_T: float = 2.0
    msteps: int = 3
    non_negative = ("gamma", "alpha", "msteps")  # the retain terms' weights; max-step epochs

    def check(self) -> None:
        super().check()
        if not self.kd_T > 0:
            raise ConfigError(f"method.kd_T must be > 0, got {self.kd_T}")


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """d(x) averaged over the batch: T²·KL(p_T ‖ p_S) with p = softmax(logits / T) (Hinton et al. 2015)."""
    log_ps = F.log_softmax(student_logits.float() / T, dim=1)
    log_pt = F.log_softmax(teacher_logits.float() / T, dim=1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)
    return kl.mean() * T * T


@register_method("scrub")
class SCRUB(Method):
    """SCRUB: the student moves away from the teacher on D_f and stays close to it on D_r.

    Teacher = frozen copy of θ_o; student = the model, initialised at θ_o. With
    d(x) = T²·KL(p_teacher(x) ‖ p_student(x)), each epoch i runs
        max pass (only if i < msteps), over D_f:  minimise −E_{D_f} d(x)
        min pass, over D_r:                       minimise γ·E_{D_r} CE(f(x), y) + α·E_{D_r} d(x)
    (Algorithm 1 of the paper; ``train_distill`` "maximize"/"minimize" in the reference code).
    """

    paper = (
        "Kurmanji et al., 'Towards Unbounded Machine Unlearning', NeurIPS 2023: "
        "max −E_{D_f} d(x) for msteps epochs, then min γ·CE + α·E_{D_r} d(x), d = T²·KL(teacher ‖ student)"
    )
    families = ("vision",)
    Config = SCRUBConfig

    def __init__(self, cfg: MethodConfig | None = None) -> None:
        super().__init__(cfg)
        self.teacher: nn.Module | None = None

    def streams(self, task: Task):
        return {"forget": task.split.forget, "retain": task.split.retain}

    def prepare(self, task: Task) -> None:
        self.teacher = frozen_copy(task.model)

    def finalize(self, task: Task) -> None:
        self.teacher = None

    def divergence(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean d(x) over the batch, student logits)."""
        assert self.teacher is not None, "call prepare() first"
        student = self.family.logits(self.model, batch)
        with torch.no_grad():
            teacher = self.family.logits(self.teacher, batch)
        return distill_kl(student, teacher, self.cfg.kd_T), student

    def max_loss(self, b: dict[str, Batch], ctx: StepContext):
        d, _ = self.divergence(b["forget"])
        return -d, {"kl_forget": float(d.detach())}

    def min_loss(self, b: dict[str, Batch], ctx: StepContext):
        batch = b["retain"]
        d, logits = self.divergence(batch)
        ce = F.cross_entropy(logits, batch["y"])
        loss = self.cfg.gamma * ce + self.cfg.alpha * d
        return loss, {"ce_retain": float(ce.detach()), "kl_retain": float(d.detach())}

    def phases(self, epoch: int) -> list[Phase]:
        out = []
        if epoch < self.cfg.msteps:
            out.append(Phase("max", ("forget",), self.max_loss))
        out.append(Phase("min", ("retain",), self.min_loss))
        return out
