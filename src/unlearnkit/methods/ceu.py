"""CE-U, cross-entropy unlearning (Yang, 2025, arXiv 2503.01224), over any family with logits.

    q_t = softmax(sg(z_t)) with z_{t, y_t} set to −∞,
    L = (1/N)·Σ_t CE(q_t, p_t) = −(1/N)·Σ_t Σ_v q_{t,v} log p_{t,v}

z_t are the model's own logits at unit t, p_t = softmax(z_t). The target is the model's current
distribution with the forget token removed, so the logit gradient is p_t − q_t: it pushes down exactly
the probability of y_t and redistributes it in proportion to the other tokens (bounded, unlike gradient
ascent's p_t − onehot(y_t) whose loss is unbounded). No reference model and no retain term (the paper's
loss; ``retain_loss`` / ``alpha`` add GradDiff's retain term if wanted). N is the batch's number of counted
units (a flat token mean). ``ignore_first_answer_tokens`` drops the first answer token(s) of each LM
example, as open-unlearning's CE-U config does (``ignore_first_n_answer_tokens: 1``); a classifier's
single unit is always kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unlearnkit.data.examples import Batch
from unlearnkit.engine.loop import StepContext
from unlearnkit.errors import ConfigError
from unlearnkit.methods.graddiff import GradDiff, GradDiffConfig
from unlearnkit.methods.token_terms import drop_first_units, flat_mean, target_logprobs, unit_logits
from unlearnkit.registry import register_method


@dataclass
class CEUConfig(GradDiffConfig):
    """open-unlearning ``CEU``: no retain term (``retain_loss="none"``), the first answer token ignored;
    the TOFU experiment's AdamW lr 1e-5, weight decay 0.01, 10 epochs, effective batch 32 (llm.md §2)."""

    retain_loss: str = "none"
    ignore_first_answer_tokens: int = 1

    def check(self) -> None:
        super().check()
        if self.ignore_first_answer_tokens < 0:
            raise ConfigError(
                f"method.ignore_first_answer_tokens must be >= 0, got {self.ignore_first_answer_tokens}"
            )


def ceu_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(1/N)·Σ_t CE(softmax(sg(z_t) with z_{t,y_t} = −∞), softmax(z_t)) over the counted units."""
    idx = targets.clamp_min(0).unsqueeze(-1)
    q = F.softmax(logits.detach().scatter(-1, idx, float("-inf")), dim=-1)
    ce = -(q * F.log_softmax(logits, dim=-1)).sum(-1)
    return flat_mean(ce, mask)


@register_method("ceu")
class CEU(GradDiff):
    """CE-U: cross-entropy to the model's own (detached) distribution with the forget token's logit at −∞."""

    paper = (
        "Yang, 'CE-U: Cross Entropy Unlearning', arXiv 2503.01224: L = E_t CE(softmax(sg(z_t) with "
        "z_{t,y_t} = −∞), softmax(z_t)); logit gradient p_t − q_t"
    )
    families = ("vision", "text")
    Config = CEUConfig

    def forget_term(self, batch: Batch, ctx: StepContext | None) -> tuple[torch.Tensor, dict[str, float]]:
        logits, targets, mask = unit_logits(self.family, self.model, batch)
        if "input_ids" in batch:
            mask = drop_first_units(mask, self.cfg.ignore_first_answer_tokens)
        loss = ceu_loss(logits, targets, mask)
        nll = -flat_mean(target_logprobs(logits.detach(), targets), mask)
        return loss, {"forget_nll": float(nll)}
