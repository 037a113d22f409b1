"""IdkNLL: fine-tune the forget questions towards "I don't know" answers, and the retain NLL.

    L = γ·E_{D_f}[NLL_θ(y_idk | x)] + α·E_{D_r}[NLL_θ(y | x)]

y_idk is the forget example's alternative answer (the text family's ``alt_*`` columns, drawn per example
from TOFU's 100 "I don't know" lines when the data is built; :meth:`TextFamily.relabel`), both NLLs the
token-mean answer NLL. TOFU (Maini et al., 2024, ``dataloader.py``, ``loss_type="idk"``) concatenates the
idk and retain batches into one token-mean cross-entropy, which weights the two sets by their token counts;
with γ = α = 1 the sum of the two means here weights them equally (the open-unlearning convention of
γ·L_f + α·L_r; llm.md §6). Its classifier analogue is random labelling (``rl``), so this is text-only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unlearnkit.data.examples import Batch
from unlearnkit.engine.loop import StepContext
from unlearnkit.methods.graddiff import GradDiff, GradDiffConfig
from unlearnkit.registry import register_method


@dataclass
class IdkNLLConfig(GradDiffConfig):
    """TOFU's ``idk`` setting: forget weight ``gamma`` 1, retain weight ``alpha`` 1, retain NLL, AdamW
    lr 1e-5, weight decay 0.01, 10 epochs, effective batch 32 (llm.md §1, §6)."""


@register_method("idknll")
class IdkNLL(GradDiff):
    """IdkNLL: NLL of "I don't know" answers to the forget questions (γ) + retain NLL (α)."""

    paper = (
        "Maini et al., 'TOFU: A Task of Fictitious Unlearning for LLMs', COLM 2024 (IDK fine-tuning): "
        "L = E_{D_f} NLL(y_idk|x) + E_{D_r} NLL(y|x)"
    )
    families = ("text",)
    Config = IdkNLLConfig

    def forget_term(self, batch: Batch, ctx: StepContext | None) -> tuple[torch.Tensor, dict[str, float]]:
        gen = ctx.generator if ctx is not None else torch.Generator()
        return self.mean_loss(self.family.relabel(batch, gen)), {}
