"""Weighted gradient ascent (WGA; Wang et al., ICLR 2025, arXiv 2502.19301), over any family with logits.

    L_f = (1/N)·Σ_t w_t·log p_θ(y_t | x, y_<t),    w_t = sg(p_θ(y_t | x, y_<t))^β

Minimising L_f ascends the NLL of each forget token, weighted by the token's own (stop-gradient)
probability to the power β: tokens the model already gives low probability get little further push, which
keeps gradient ascent from diverging on them (the paper's "weighted GA"). N is the number of answer tokens
in the batch (a flat token mean, as open-unlearning's ``compute_wga_loss``); for a classifier each example
is one unit, with p the probability of its label. The objective is γ·L_f + α·L_r, L_r the retain NLL
(:class:`~unlearnkit.methods.graddiff.GradDiff`'s retain machinery, so ``retain_loss="kl"`` works too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unlearnkit.data.examples import Batch
from unlearnkit.engine.loop import StepContext
from unlearnkit.errors import ConfigError
from unlearnkit.methods.graddiff import GradDiff, GradDiffConfig
from unlearnkit.methods.token_terms import flat_mean, target_logprobs, unit_logits
from unlearnkit.registry import register_method


@dataclass
class WGAConfig(GradDiffConfig):
    """open-unlearning ``WGA.yaml``: β = 1, forget weight ``gamma`` 1, retain weight ``alpha`` 1, retain NLL;
    lr 1e-5, 5 epochs (the paper: effective batch 16); weight decay 0.01 (TOFU experiment, llm.md §4)."""

    epochs: int = 5
    beta: float = 1.0

    def check(self) -> None:
        super().check()
        if self.beta < 0:
            raise ConfigError(f"method.beta must be >= 0, got {self.beta}")


def weighted_ga_loss(logp: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(1/N)·Σ_t w_t·log p_t(y_t) over the counted units; the weights are detached here."""
    return flat_mean(weights.detach() * logp, mask)


def wga_weights(logp: torch.Tensor, beta: float) -> torch.Tensor:
    """w_t = sg(p_t(y_t))^β."""
    return logp.detach().exp().pow(beta)


@register_method("wga")
class WGA(GradDiff):
    """WGA: γ·(1/N)Σ_t sg(p_t(y_t))^β·log p_t(y_t) on D_f + α·retain NLL (token-weighted gradient ascent)."""

    paper = (
        "Wang et al., 'Rethinking LLM Unlearning Objectives: A Gradient Perspective and Go Beyond', "
        "ICLR 2025 (WGA): L_f = E_{D_f} Σ_t p(y_t|x,y_<t)^β·log p(y_t|x,y_<t), weights stop-gradient"
    )
    families = ("vision", "text")
    Config = WGAConfig

    def weights(self, logp: torch.Tensor) -> torch.Tensor:
        return wga_weights(logp, self.cfg.beta)

    def forget_term(self, batch: Batch, ctx: StepContext | None) -> tuple[torch.Tensor, dict[str, float]]:
        logits, targets, mask = unit_logits(self.family, self.model, batch)
        logp = target_logprobs(logits, targets)
        w = self.weights(logp)
        loss = weighted_ga_loss(logp, w, mask)
        return loss, {
            "forget_nll": float(-flat_mean(logp.detach(), mask)),
            "weight": float(flat_mean(w, mask)),
        }
