"""PDU, primal-dual constrained unlearning (Entesari et al., 2025, arXiv 2506.05314), for any family with
logits.

The problem is  min_θ L_f(θ)  s.t.  L_r(θ) ≤ ε,  with the entropic forget loss

    L_f = (1/N)·Σ_t (max_v z_{t,v} − mean_v z_{t,v})²

(driving each forget unit's logits towards a flat, maximum-entropy distribution; N the batch's number of
answer tokens, or examples for a classifier) and L_r the retain NLL. PDU takes primal steps on the
Lagrangian and projected dual-ascent steps on its multiplier:

    θ ← optimiser step on  γ·L_f + λ·(L_r − ε),        λ ← max(0, λ + η·(L_r − ε))

with λ starting at ``alpha`` (λ₀). ``dual_update``: ``"step"`` uses each step's L_r after the step's loss
(open-unlearning's default, on every loss call); ``"epoch"`` uses the mean of the epoch's step values of L_r
(the reference code runs one extra pass over the retain set instead). No dual update before epoch
``dual_warmup_epochs``. λ and the epoch's running sum are part of the engine's checkpoints
(:meth:`PDU.loop_state`). Under several processes each rank updates λ from its own L_r.

Positions: the forget loss is taken at the logits predicting each answer token (``label_positions=
"next_token"``); the reference code indexes the logits at the label positions without the causal shift
(``"label"``, one position later), offered for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from unlearnkit.data.examples import Batch
from unlearnkit.engine.loop import StepContext
from unlearnkit.errors import ConfigError
from unlearnkit.methods.graddiff import GradDiff, GradDiffConfig
from unlearnkit.methods.token_terms import flat_mean, unit_logits
from unlearnkit.registry import register_method


@dataclass
class PDUConfig(GradDiffConfig):
    """The PDU code's TOFU run (open-unlearning ``community/methods/PDU/run.sh``, 1B/3B models): λ₀
    (``alpha``) 100, dual step ``dual_lr`` (η) 5, retain bound ``epsilon`` 0.3, lr 1e-5, 10 epochs; dual
    warm-up 5 epochs and per-step dual updates (``PDU.yaml``; that file leaves ε unset: it depends on the
    model and data).
    MUSE run: λ₀ 50, η 1, warm-up 3, ε 1.5 (News) / 0.1 (Books). Weight decay 0.01 (TOFU experiment)."""

    alpha: float = 100.0
    epsilon: float = 0.3
    dual_lr: float = 5.0
    dual_warmup_epochs: int = 5
    dual_update: str = "step"
    label_positions: str = "next_token"
    # ε bounds the retain NLL, never negative; alpha (λ₀, the initial multiplier) comes from GradDiff's
    non_negative = (*GradDiffConfig.non_negative, "epsilon", "dual_lr", "dual_warmup_epochs")

    def check(self) -> None:
        super().check()
        if self.retain_loss != "nll":
            raise ConfigError("PDU constrains the retain NLL: method.retain_loss must be 'nll'")
        if self.dual_update not in ("step", "epoch"):
            raise ConfigError(f"method.dual_update must be 'step' or 'epoch', got {self.dual_update!r}")
        if self.label_positions not in ("next_token", "label"):
            raise ConfigError(
                f"method.label_positions must be 'next_token' or 'label', got {self.label_positions!r}"
            )


def logit_margin_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(1/N)·Σ_t (max_v z_{t,v} − mean_v z_{t,v})² over the counted units."""
    gap = logits.max(-1).values - logits.mean(-1)
    return flat_mean(gap.pow(2), mask)


def dual_step(lam: float, retain_loss: float, epsilon: float, lr: float) -> float:
    """Projected dual ascent: max(0, λ + η·(L_r − ε))."""
    return max(0.0, lam + lr * (retain_loss - epsilon))


@register_method("pdu")
class PDU(GradDiff):
    """PDU: min L_f = E(max z − mean z)² on D_f s.t. retain NLL ≤ ε, by primal-dual steps on λ."""

    paper = (
        "Entesari et al., 'Constrained Entropic Unlearning: A Primal-Dual Framework for Large Language "
        "Models', arXiv 2506.05314: min L_f s.t. L_r ≤ ε; θ-step on γL_f + λ(L_r − ε), λ ← [λ + η(L_r − ε)]₊"
    )
    families = ("vision", "text")
    Config = PDUConfig

    def __init__(self, cfg: PDUConfig | None = None) -> None:
        super().__init__(cfg)
        self.reset_dual()

    def reset_dual(self) -> None:
        self.lam = float(self.cfg.alpha)
        self._epoch, self._sum, self._count = 0, 0.0, 0

    def prepare(self, task) -> None:
        super().prepare(task)
        self.reset_dual()

    @property
    def uses_retain(self) -> bool:
        return True  # the constraint needs L_r even while λ = 0

    def loop_state(self) -> dict[str, Any]:
        return {"lam": self.lam, "epoch": self._epoch, "sum": self._sum, "count": self._count}

    def load_loop_state(self, state: dict[str, Any]) -> None:
        self.lam, self._epoch = float(state["lam"]), int(state["epoch"])
        self._sum, self._count = float(state["sum"]), int(state["count"])

    def forget_term(self, batch: Batch, ctx: StepContext | None) -> tuple[torch.Tensor, dict[str, float]]:
        if "input_ids" in batch and self.cfg.label_positions == "label":
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            logits = (out.logits if hasattr(out, "logits") else out).float()
            mask = batch["labels"] != -100
        else:
            logits, _, mask = unit_logits(self.family, self.model, batch)
        return logit_margin_loss(logits, mask), {}

    def loss(
        self, b: dict[str, Batch], ctx: StepContext | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        epoch = ctx.epoch if ctx is not None else self._epoch
        if epoch != self._epoch:  # a new epoch: the epoch-mode update with the last epoch's mean L_r
            if self.cfg.dual_update == "epoch" and self._count and self._epoch >= self.cfg.dual_warmup_epochs:
                self.lam = dual_step(self.lam, self._sum / self._count, self.cfg.epsilon, self.cfg.dual_lr)
            self._epoch, self._sum, self._count = epoch, 0.0, 0
        lf, logs = self.forget_term(b["forget"], ctx)
        lr = self.retain_term(b["retain"])
        lam = self.lam
        total = self.cfg.gamma * lf + lam * (lr - self.cfg.epsilon)
        value = float(lr.detach())
        self._sum, self._count = self._sum + value, self._count + 1
        if self.cfg.dual_update == "step" and epoch >= self.cfg.dual_warmup_epochs:
            self.lam = dual_step(self.lam, value, self.cfg.epsilon, self.cfg.dual_lr)
        logs = {"forget_loss": float(lf.detach()), "retain_loss": value, "lambda": lam} | logs
        return total, logs
