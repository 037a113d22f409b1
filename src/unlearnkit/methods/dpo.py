"""DPO unlearning with "I don't know" answers (IdkPO / IdkDPO), with cached reference log-probabilities.

For each forget question the forget answer y_l is the losing response and the alternative answer y_w of the
text family's ``alt_*`` columns (e.g. "I don't know", built with ``encode_qa(..., alt_answers=...)``) the
winning one (the DPO loss of Rafailov et al. 2023 with open-unlearning's 2/β scaling; an unlearning
baseline of the NPO paper, Zhang et al. 2024, and open-unlearning's IdkDPO):

    L = −(2/β)·E_{D_f}[log σ(β·[(log π_θ − log π_ref)(y_w|x) − (log π_θ − log π_ref)(y_l|x)])]

with log π = −(summed answer NLL). π_ref is the starting model; ``prepare`` computes its NLL of both
answers of every forget example once and stores them by example id, so no reference model is kept and
each step runs one forward pass over [y_l; y_w] (the reference runs 3 grad + 2 reference passes; llm.md §5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unlearnkit.data.examples import Batch
from unlearnkit.engine.loop import StepContext
from unlearnkit.errors import ConfigError
from unlearnkit.families.text import TEXT_COLUMNS
from unlearnkit.methods.base import Task
from unlearnkit.methods.graddiff import GradDiff, GradDiffConfig
from unlearnkit.methods.reference import ReferenceCache, compute_reference
from unlearnkit.registry import register_method


@dataclass
class DPOConfig(GradDiffConfig):
    """open-unlearning ``DPO.yaml`` (used as IdkDPO): β = 0.1, forget weight ``gamma`` 1, retain weight
    ``alpha`` 1, retain NLL; AdamW lr 1e-5, weight decay 0.01, 10 epochs, effective batch 32 (llm.md §1)."""

    beta: float = 0.1

    def check(self) -> None:
        super().check()
        if not self.beta > 0:
            raise ConfigError(f"method.beta must be > 0, got {self.beta}")


def dpo_loss(
    nll_win: torch.Tensor,
    nll_lose: torch.Tensor,
    ref_nll_win: torch.Tensor,
    ref_nll_lose: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """−(2/β)·mean log σ(β·[(log π_θ − log π_ref)(y_w) − (log π_θ − log π_ref)(y_l)]), log π = −NLL."""
    win = ref_nll_win - nll_win
    lose = ref_nll_lose - nll_lose
    return -(2.0 / beta) * F.logsigmoid(beta * (win - lose)).mean()


def _both_answers(
    family, model, batch: Batch, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(NLL of the alternative answer y_w, NLL of the forget answer y_l), in one forward pass if possible."""
    win = family.relabel(batch, generator)
    if all(batch[c].shape == win[c].shape for c in TEXT_COLUMNS):
        both = {c: torch.cat([win[c], batch[c]]) for c in TEXT_COLUMNS}
        nll = family.per_example_loss(model, both | {"id": torch.cat([batch["id"], batch["id"]])})
        return nll[: len(batch["id"])], nll[len(batch["id"]) :]
    return family.per_example_loss(model, win), family.per_example_loss(model, batch)


@register_method("dpo")
class DPO(GradDiff):
    """DPO on D_f: prefer the alternative answer (y_w) over the forget answer (y_l); reference NLLs cached."""

    paper = (
        "Rafailov et al., NeurIPS 2023 (DPO), as IdkPO in TOFU/NPO: L = −(2/β)·E_{D_f} log σ(β·[log "
        "π_θ(y_w|x)/π_ref(y_w|x) − log π_θ(y_l|x)/π_ref(y_l|x)]), y_w = 'I don't know', y_l = forget answer"
    )
    families = ("text",)
    Config = DPOConfig

    def __init__(self, cfg: DPOConfig | None = None) -> None:
        super().__init__(cfg)
        self.reference: ReferenceCache | None = None

    def prepare(self, task: Task) -> None:
        super().prepare(task)
        gen = torch.Generator().manual_seed(task.seed)

        def ref_fn(model, batch):
            win, lose = _both_answers(task.family, model, batch, gen)
            return {"win": win, "lose": lose}

        self.reference = compute_reference(
            task.model, task.split.forget, ref_fn, self.batch_sizes(task)["forget"]
        )

    def forget_term(self, batch: Batch, ctx: StepContext | None) -> tuple[torch.Tensor, dict[str, float]]:
        assert self.reference is not None, "prepare() was not called"
        gen = ctx.generator if ctx is not None else torch.Generator()
        nll_w, nll_l = _both_answers(self.family, self.model, batch, gen)
        ref_w = self.reference.get(batch["id"], "win").to(nll_w)
        ref_l = self.reference.get(batch["id"], "lose").to(nll_l)
        loss = dpo_loss(nll_w, nll_l, ref_w, ref_l, self.cfg.beta)
        return loss, {"forget_nll": float(nll_l.detach().mean()), "alt_nll": float(nll_w.detach().mean())}


@register_method("idkpo")
class IdkPO(DPO):
    """IdkPO: DPO preferring "I don't know" (the ``alt_*`` answers) to the forget answer on D_f."""

    paper = DPO.paper
