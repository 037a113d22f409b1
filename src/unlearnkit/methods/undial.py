"""UNDIAL, self-distillation with adjusted logits (Dong et al., NAACL 2025, arXiv 2402.10052).

    q_t = softmax(z_t^ref − β·onehot(y_t)),
    L_f = (1/N)·Σ_t CE(q_t, p_θ,t) = −(1/N)·Σ_t Σ_v q_{t,v} log p_θ,t,v

z^ref are the logits of the model unlearning starts from: the student is distilled towards the original's
distribution with the forget token's logit lowered by β, a bounded target (unlike gradient ascent). The
objective is γ·L_f + α·L_r (open-unlearning: β = 10, γ = 1, α = 0). N is the batch's number of counted
units (``positions``: the answer tokens by default, ``"all"`` every real token as on raw text; the reference
code averages over every position, padding and prompt included, which is not reproduced). A classifier has
one unit per example.

The reference, cached once: z^ref is fixed, so ``prepare`` computes the target q once per forget example
and stores it by id (:mod:`unlearnkit.methods.reference`); no second model is held (the reference code
re-runs a deep copy every step). The full target is (T−1)·V floats per example (TOFU on a 128k-vocabulary
Llama at ~150 tokens: ~77 MB each), so ``reference`` chooses what to keep:

- ``"full"``: q over the whole vocabulary (exact; probabilities, so a step takes no exp of the cache);
- ``"topk"``: the ``top_k`` largest entries of q at each unit (indices and log q: 2·k floats per unit);
  the tail mass r = 1 − Σ_topk q is kept and spread uniformly over the V − k other tokens, so the target
  still sums to 1 and the loss is exact whenever the tail is flat. ``prepare`` records the largest tail mass
  over the counted units in ``max_tail_mass`` (0 when k ≥ V);
- ``"auto"`` (default): ``"full"`` when the cache fits in ``cache_mb``, else ``"topk"``;
- ``"frozen"``: a frozen copy of the original run on each batch (exact, two models in memory).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from unlearnkit.data.examples import Batch
from unlearnkit.engine.loop import StepContext
from unlearnkit.errors import ConfigError
from unlearnkit.families.base import Family
from unlearnkit.methods.base import Task, frozen_copy
from unlearnkit.methods.graddiff import GradDiff, GradDiffConfig
from unlearnkit.methods.reference import ReferenceCache, compute_reference
from unlearnkit.methods.token_terms import POSITIONS, first_unit, unit_logits
from unlearnkit.registry import register_method

REFERENCES = ("auto", "full", "topk", "frozen")


@dataclass
class UNDIALConfig(GradDiffConfig):
    """open-unlearning ``UNDIAL.yaml``: β = 10, forget weight ``gamma`` 1, retain weight ``alpha`` 0, lr 1e-4
    (the paper trains LoRA r8 at effective batch 32 and sweeps β ∈ {3, 10, 30}); 10 epochs and weight decay
    0.01 of the TOFU experiment (llm.md §1)."""

    lr: float = 1e-4
    beta: float = 10.0
    alpha: float = 0.0
    positions: str = "answer"
    reference: str = "auto"
    top_k: int = 128
    cache_mb: float = 512.0
    non_negative = (*GradDiffConfig.non_negative, "beta", "cache_mb")  # β lowers the target's logit

    def check(self) -> None:
        super().check()
        if self.positions not in POSITIONS:
            raise ConfigError(f"method.positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.reference not in REFERENCES:
            raise ConfigError(f"method.reference must be one of {REFERENCES}, got {self.reference!r}")
        if self.top_k < 1:
            raise ConfigError(f"method.top_k must be >= 1, got {self.top_k}")


def adjusted_target_logprobs(ref_logits: torch.Tensor, targets: torch.Tensor, beta: float) -> torch.Tensor:
    """log q_t = log_softmax(z_t^ref − β·onehot(y_t)) ``[B, U, V]`` (units without a target unadjusted)."""
    shift = torch.zeros_like(ref_logits).scatter(-1, targets.clamp_min(0).unsqueeze(-1), beta)
    shift = shift * (targets >= 0).unsqueeze(-1)
    return F.log_softmax(ref_logits.float() - shift, dim=-1)


def undial_loss(q: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(1/N)·Σ_t CE(q_t, p_t) with the full target distribution q ``[B, U, V]``; the cross-entropy runs on
    the counted units only (prompt and padding positions would be masked out anyway)."""
    ce = F.cross_entropy(logits[mask], q[mask], reduction="sum")  # probability targets, one fused kernel
    return ce / mask.sum().clamp_min(1)


def undial_topk_loss(
    top_idx: torch.Tensor, top_logq: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """(1/N)·Σ_t CE(q̂_t, p_t), q̂ = q on the cached top-k, the tail mass spread evenly over the rest
    (computed on the counted units only)."""
    logp = F.log_softmax(logits[mask], dim=-1)
    top_idx = top_idx[mask]
    vocab, k = logp.shape[-1], top_idx.shape[-1]
    q_top = top_logq[mask].exp()
    top_logp = logp.gather(-1, top_idx)
    top_term = (q_top * top_logp).sum(-1)
    if vocab > k:
        tail = (1 - q_top.sum(-1)).clamp_min(0)
        tail_logp = logp.sum(-1) - top_logp.sum(-1)
        top_term = top_term + tail / (vocab - k) * tail_logp
    return -top_term.sum() / mask.sum().clamp_min(1)


@register_method("undial")
class UNDIAL(GradDiff):
    """UNDIAL: distil towards the original's logits with the forget token's logit lowered by β (cached)."""

    paper = (
        "Dong et al., 'UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning in Large "
        "Language Models', NAACL 2025: L = E_t CE(softmax(z_t^ref − β·onehot(y_t)), softmax(z_t^θ))"
    )
    families = ("vision", "text")
    Config = UNDIALConfig

    def __init__(self, cfg: UNDIALConfig | None = None) -> None:
        super().__init__(cfg)
        self.target: ReferenceCache | None = None
        self.target_model: nn.Module | None = None
        self.max_tail_mass: float = 0.0

    def _units(self, family: Family, model: nn.Module, batch: Batch, trim: bool = True):
        return unit_logits(family, model, batch, self.cfg.positions, trim)

    def prepare(self, task: Task) -> None:
        super().prepare(task)
        self.target, self.target_model, self.max_tail_mass = None, None, 0.0
        mode, bs = self.cfg.reference, self.batch_sizes(task)["forget"]
        if mode == "frozen":
            self.target_model = frozen_copy(task.model)
            return

        def full(model, batch):  # every position from 0: forget_term slices from the batch's first unit
            logits, targets, _ = self._units(task.family, model, batch, trim=False)
            return adjusted_target_logprobs(logits, targets, self.cfg.beta).exp()

        if mode in ("auto", "full"):
            budget = None if mode == "full" else int(self.cfg.cache_mb * 2**20)
            self.target = compute_reference(task.model, task.split.forget, full, bs, budget_bytes=budget)
            if self.target is not None:
                return

        def topk(model, batch):
            logits, targets, mask = self._units(task.family, model, batch, trim=False)
            logq = adjusted_target_logprobs(logits, targets, self.cfg.beta)
            top_logq, top_idx = logq.topk(min(self.cfg.top_k, logq.shape[-1]), dim=-1)
            tail = (1 - top_logq.exp().sum(-1)).clamp_min(0) * mask
            return {"idx": top_idx.float(), "logq": top_logq, "tail": tail}  # ids < 2^24: exact in float32

        self.target = compute_reference(task.model, task.split.forget, topk, bs)
        self.max_tail_mass = float(self.target.values["tail"].max())

    def finalize(self, task: Task) -> None:
        super().finalize(task)
        self.target, self.target_model = None, None

    def forget_term(self, batch: Batch, ctx: StepContext | None) -> tuple[torch.Tensor, dict[str, float]]:
        logits, targets, mask = self._units(self.family, self.model, batch)
        if self.target_model is not None:
            with torch.no_grad():
                ref_logits, _, _ = self._units(self.family, self.target_model, batch)
            q = adjusted_target_logprobs(ref_logits, targets, self.cfg.beta).exp()
            loss = undial_loss(q, logits, mask)
        else:
            assert self.target is not None, "prepare() was not called"
            # the cache holds every position of the set's width; this batch's units are [lo, hi)
            lo = first_unit(batch, self.cfg.positions)
            units = slice(lo, lo + logits.shape[1])
            if "idx" in self.target.values:
                idx = self.target.get(batch["id"], "idx", units).to(logits.device).long()
                logq = self.target.get(batch["id"], "logq", units).to(logits)
                loss = undial_topk_loss(idx, logq, logits, mask)
            else:
                loss = undial_loss(self.target.get(batch["id"], "loss", units).to(logits), logits, mask)
        nll = F.cross_entropy(logits.detach()[mask], targets[mask], reduction="sum") / mask.sum().clamp_min(1)
        return loss, {"forget_nll": float(nll)}
