"""SimNPO (Fan et al., 2024): NPO without a reference model, length-normalised, with a reward margin.

The paper (arXiv 2410.07163) writes

    L_SimNPO = −(2/β)·E_{D_f}[log σ(−(β/|y|)·log π_θ(y|x) − γ)] = −(2/β)·E[log σ(β·NLL/|y| − γ)]

with NLL the summed per-example loss and |y| the number of loss units (answer tokens for an LM,
``family.num_units``; 1 for a classifier, so SimNPO runs on every family). The reference code
(Unlearn-Simple ``simnpo_grad_diff``; open-unlearning ``SimNPO``) computes ``β·(NLL/|y| − δ)`` instead,
i.e. the margin is multiplied by β: γ_paper = β·δ_code (llm.md §1, "margin scaling subtlety";
open-unlearning issue #123). ``margin_form`` picks the reading of ``margin``: ``"paper"`` subtracts it
outside β (γ), ``"code"`` inside (δ). At the default margin 0 the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unlearnkit.data.examples import Batch
from unlearnkit.engine.loop import StepContext
from unlearnkit.errors import ConfigError
from unlearnkit.methods.graddiff import GradDiff, GradDiffConfig
from unlearnkit.registry import register_method

MARGIN_FORMS = ("paper", "code")


@dataclass
class SimNPOConfig(GradDiffConfig):
    """SimNPO's TOFU forget10 settings (Unlearn-Simple ``config/forget.yaml``; open-unlearning
    ``SimNPO.yaml``): β = 4.5, forget weight ``gamma`` = 0.125 (the code's ``npo_coeff``, "λ" on the
    model cards), retain weight ``alpha`` = 1 (``grad_diff_coeff``), retain NLL, margin 0 (``delta`` /
    ``gamma`` in the code); AdamW lr 1e-5, weight decay 0.01, 10 epochs, effective batch 32. forget05 uses
    β = 2.5, gamma = 0.1375.

    Note the names: ``gamma`` is the *forget weight* (open-unlearning's γ), the paper's margin γ is
    ``margin``, read according to ``margin_form`` (``"paper"``: β·NLL/|y| − margin; ``"code"``:
    β·(NLL/|y| − margin)).
    """

    beta: float = 4.5
    gamma: float = 0.125
    alpha: float = 1.0
    margin: float = 0.0
    margin_form: str = "paper"
    # the paper's reward margin γ ≥ 0 (as SimPO's): a negative one adds to β·NLL/|y| inside the sigmoid,
    # so the forget loss saturates, and its gradient vanishes, before the forget answers' likelihood falls
    non_negative = (*GradDiffConfig.non_negative, "margin")

    def check(self) -> None:
        super().check()
        if not self.beta > 0:
            raise ConfigError(f"method.beta must be > 0, got {self.beta}")
        if self.margin_form not in MARGIN_FORMS:
            raise ConfigError(f"method.margin_form must be one of {MARGIN_FORMS}, got {self.margin_form!r}")


def simnpo_loss(
    nll: torch.Tensor, units: torch.Tensor, beta: float, margin: float = 0.0, margin_form: str = "paper"
) -> torch.Tensor:
    """−(2/β)·mean log σ(β·NLL/|y| − γ) (``"paper"``) or −(2/β)·mean log σ(β·(NLL/|y| − δ)) (``"code"``)."""
    per_unit = nll / units.to(nll).clamp_min(1)
    if margin_form == "paper":
        z = beta * per_unit - margin
    elif margin_form == "code":
        z = beta * (per_unit - margin)
    else:
        raise ConfigError(f"margin_form must be one of {MARGIN_FORMS}, got {margin_form!r}")
    return -(2.0 / beta) * F.logsigmoid(z).mean()


@register_method("simnpo")
class SimNPO(GradDiff):
    """SimNPO: −(2/β)·E log σ(−(β/|y|)·log π_θ(y|x) − γ) on D_f (+ α·retain NLL); no reference model."""

    paper = (
        "Fan et al., 'Simplicity Prevails: Rethinking Negative Preference Optimization for LLM "
        "Unlearning', arXiv 2410.07163: L = −(2/β)·E_{D_f} log σ(−(β/|y|)·log π_θ(y|x) − γ)"
    )
    Config = SimNPOConfig

    def forget_term(self, batch: Batch, ctx: StepContext | None) -> tuple[torch.Tensor, dict[str, float]]:
        nll = self.family.per_example_loss(self.model, batch)
        units = self.family.num_units(batch).to(nll.device)
        loss = simnpo_loss(nll, units, self.cfg.beta, self.cfg.margin, self.cfg.margin_form)
        return loss, {"forget_nll": float(nll.detach().mean())}
