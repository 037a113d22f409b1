"""SatImp (Yang et al., 2025, arXiv 2505.11953): token-weighted gradient ascent favouring tokens that are
neither saturated nor hopeless, over any family with logits.

    L_f = (1/N)·Σ_t w_t·log p_θ(y_t | x, y_<t),    w_t = sg(p_t(y_t))^β1 · sg(1 − p_t(y_t))^β2

β1 (the importance term) down-weights tokens the model already finds unlikely, β2 (the saturation term)
down-weights tokens it is nearly certain of. N is the batch's number of answer tokens (a flat token mean,
open-unlearning's ``compute_satimp_loss``); a classifier has one unit per example. The objective is
γ·L_f + α·L_r with the retain NLL (GradDiff's retain machinery).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unlearnkit.errors import ConfigError
from unlearnkit.methods.wga import WGA, WGAConfig
from unlearnkit.registry import register_method


@dataclass
class SatImpConfig(WGAConfig):
    """open-unlearning ``SatImp.yaml``: β1 = 5, β2 = 1, forget weight ``gamma`` 0.1, retain weight ``alpha``
    1, lr 1e-5, 5 epochs (llm.md §3: the trainer's class defaults and README say γ = 1, α = 0.1; the YAML,
    which the experiments run, wins); weight decay 0.01 (TOFU experiment)."""

    beta1: float = 5.0
    beta2: float = 1.0
    gamma: float = 0.1
    alpha: float = 1.0

    def check(self) -> None:
        super().check()
        for name in ("beta1", "beta2"):
            if getattr(self, name) < 0:
                raise ConfigError(f"method.{name} must be >= 0, got {getattr(self, name)}")


def satimp_weights(logp: torch.Tensor, beta1: float, beta2: float) -> torch.Tensor:
    """w_t = sg(p_t)^β1 · sg(1 − p_t)^β2."""
    p = logp.detach().exp()
    return p.pow(beta1) * (1 - p).clamp_min(0).pow(beta2)


@register_method("satimp")
class SatImp(WGA):
    """SatImp: γ·(1/N)Σ_t sg(p_t)^β1·sg(1−p_t)^β2·log p_t(y_t) on D_f + α·retain NLL."""

    paper = (
        "Yang et al., 'Exploring Criteria of Loss Reweighting to Enhance LLM Unlearning', ICML 2025 "
        "(SatImp): L_f = E_{D_f} Σ_t p_t^β1 (1 − p_t)^β2 log p_t(y_t), weights stop-gradient"
    )
    Config = SatImpConfig

    def weights(self, logp: torch.Tensor) -> torch.Tensor:
        return satimp_weights(logp, self.cfg.beta1, self.cfg.beta2)
