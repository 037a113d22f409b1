"""Negative preference optimization (NPO; Zhang et al., 2024), with a cached reference and no second model.

    L_NPO = −(2/β)·E_{D_f}[log σ(−β·log(π_θ(y|x) / π_ref(y|x)))]
          = −(2/β)·E_{D_f}[log σ(β·(NLL_θ(x, y) − NLL_ref(x, y)))]

(the paper's L_NPO = (2/β)·E log(1 + (π_θ/π_ref)^β), written as the code computes it), NLL the *summed*
per-example loss (answer-token NLL for an LM, cross-entropy for a classifier), no length normalisation.
π_ref is the model unlearning starts from (the fine-tuned original, ``ref_policy: fine_tuned`` in the NPO
code). Both D_f and π_ref are fixed, so ``prepare`` computes NLL_ref of every forget example once and stores
it by example id (``methods.reference``); training holds one model and runs one forward pass per forget
batch. The reference code keeps a deep copy of the model and runs it on every step (llm.md §4–5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unlearnkit.data.examples import Batch
from unlearnkit.engine.loop import StepContext
from unlearnkit.errors import ConfigError
from unlearnkit.methods.base import Task
from unlearnkit.methods.graddiff import GradDiff, GradDiffConfig
from unlearnkit.methods.reference import ReferenceCache, compute_reference
from unlearnkit.registry import register_method


@dataclass
class NPOConfig(GradDiffConfig):
    """β = 0.1, forget weight ``gamma`` 1, retain weight ``alpha`` 1, retain NLL: open-unlearning
    ``NPO.yaml`` and the NPO paper's TOFU config (``npo_grad_diff``, npo_coeff = grad_diff_coeff = 1);
    AdamW lr 1e-5, weight decay 0.01, 10 epochs, effective batch 32 (llm.md §1). ``retain_loss="none"``
    gives plain NPO, ``"kl"`` the paper's ``npo_KL``.
    """

    beta: float = 0.1

    def check(self) -> None:
        super().check()
        if not self.beta > 0:
            raise ConfigError(f"method.beta must be > 0, got {self.beta}")


def npo_loss(nll: torch.Tensor, ref_nll: torch.Tensor, beta: float) -> torch.Tensor:
    """−(2/β)·mean log σ(β·(NLL_θ − NLL_ref)) over the batch."""
    return -(2.0 / beta) * F.logsigmoid(beta * (nll - ref_nll)).mean()


@register_method("npo")
class NPO(GradDiff):
    """NPO: −(2/β)·E log σ(−β·log(π_θ/π_ref)) on D_f (+ α·retain), reference NLLs cached once by id."""

    paper = (
        "Zhang et al., 'Negative Preference Optimization', COLM 2024: "
        "L = −(2/β)·E_{D_f} log σ(−β·log(π_θ(y|x)/π_ref(y|x)))"
    )
    Config = NPOConfig

    def __init__(self, cfg: NPOConfig | None = None) -> None:
        super().__init__(cfg)
        self.reference: ReferenceCache | None = None

    def prepare(self, task: Task) -> None:
        super().prepare(task)
        self.reference = compute_reference(
            task.model, task.split.forget, task.family.per_example_loss, self.batch_sizes(task)["forget"]
        )

    def forget_term(self, batch: Batch, ctx: StepContext | None) -> tuple[torch.Tensor, dict[str, float]]:
        assert self.reference is not None, "prepare() was not called"
        nll = self.family.per_example_loss(self.model, batch)
        ref = self.reference.get(batch["id"]).to(nll)
        return npo_loss(nll, ref, self.cfg.beta), {"forget_nll": float(nll.detach().mean())}
