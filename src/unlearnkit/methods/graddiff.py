"""Gradient difference (GradDiff): ascend the forget loss, descend a retain term, over any family.

The retain term is the plain loss on D_r (``"nll"``) or the KL divergence from the original model's
predictive distributions (``"kl"``). :class:`GradDiff` is also the base of NPO, SimNPO and DPO/IdkPO,
which replace the forget term and keep the same retain machinery (``γ·forget + α·retain``, as every
GradDiff-derived trainer of open-unlearning does; llm.md §1).

KL reference, ``kl_reference``: the KL needs the original model's full output distribution on every
retain example — K values per example for a classifier, but (T−1)·V per example for a causal LM (TOFU
retain90 on a 32k-vocabulary Llama: 3,600 × ~150 × 32,000 floats ≈ 70 GB). ``"auto"`` (default) caches
the original's log-probabilities per example id before the loop when the cache fits in ``kl_cache_mb``
(classifiers, tiny LMs), and otherwise keeps a frozen copy of the original and runs it on each retain
batch, as the reference code does. ``"cache"`` / ``"frozen"`` force one of the two; both give the same
loss. A top-k logit cache would be smaller but would no longer be the KL, so it is not offered.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from unlearnkit.data.examples import Batch
from unlearnkit.engine.loop import Phase, StepContext
from unlearnkit.errors import ConfigError
from unlearnkit.families.base import Family
from unlearnkit.methods.base import Method, MethodConfig, Task, frozen_copy
from unlearnkit.methods.reference import ReferenceCache, compute_reference
from unlearnkit.registry import register_method

RETAIN_LOSSES = ("nll", "kl", "none")
KL_REFERENCES = ("auto", "cache", "frozen")


@dataclass
class GradDiffConfig(MethodConfig):
    """open-unlearning defaults (``configs/trainer/GradDiff.yaml``): forget weight ``gamma`` 1, retain
    weight ``alpha`` 1, retain loss NLL; TOFU experiment: AdamW, lr 1e-5, weight decay 0.01, 10 epochs,
    effective batch 32 (llm.md §1). Its linear warm-up over the first epoch is not reproduced (our
    schedules are per epoch): use ``scheduler`` / a lower ``lr`` instead. Tiny models need a larger lr
    (presets set it).

    ``retain_loss``: ``"nll"`` (the family's ``mean_loss`` on D_r), ``"kl"`` (KL(π_orig ‖ π_θ) on D_r,
    averaged over the real next-token positions of an LM batch, or over examples for a classifier;
    open-unlearning averages over every position, padding included) or ``"none"``.
    """

    epochs: int = 10
    lr: float = 1e-5
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    batch_size: int | None = None  # the batch-size rule: methods/base.py MethodConfig
    gamma: float = 1.0
    alpha: float = 1.0
    retain_loss: str = "nll"
    kl_reference: str = "auto"
    kl_cache_mb: float = 512.0
    non_negative = ("gamma", "alpha", "kl_cache_mb")  # the forget and retain weights, a cache size

    def check(self) -> None:
        super().check()
        if self.retain_loss not in RETAIN_LOSSES:
            raise ConfigError(f"method.retain_loss must be one of {RETAIN_LOSSES}, got {self.retain_loss!r}")
        if self.kl_reference not in KL_REFERENCES:
            raise ConfigError(
                f"method.kl_reference must be one of {KL_REFERENCES}, got {self.kl_reference!r}"
            )


def output_log_probs(family: Family, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probabilities ``[B, U, V]``, unit weights ``[B, U]``) of the model's predictive distributions.

    A causal LM has one unit per next-token position whose target is a real token (``attention_mask``);
    a classifier (a family with ``logits``) has one unit per example.
    """
    if "input_ids" in batch:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits = (out.logits if hasattr(out, "logits") else out)[:, :-1]
        return F.log_softmax(logits.float(), dim=-1), batch["attention_mask"][:, 1:].float()
    logits_fn = getattr(family, "logits", None)
    if logits_fn is None:
        raise ConfigError(f"retain_loss=kl needs output distributions; the {family.name!r} family has none")
    logits = logits_fn(model, batch)
    return F.log_softmax(logits.float(), dim=-1)[:, None], torch.ones(len(logits), 1, device=logits.device)


def kl_from_reference(ref_logp: torch.Tensor, logp: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_units w·KL(p_ref ‖ p_θ) / Σ w, with KL = Σ_v p_ref (log p_ref − log p_θ)."""
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    return (kl * weights).sum() / weights.sum().clamp_min(1)


@register_method("graddiff")
class GradDiff(Method):
    """GradDiff: min_θ −γ·ℓ(θ; D_f) + α·R(θ; D_r), R = NLL on D_r or KL to the original (Liu et al. 2022).

    With ``retain_loss="nll"`` this is TOFU's ``grad_diff`` / open-unlearning's ``GradDiff``; with ``"kl"``
    it is TOFU's ``KL`` method (Maini et al. 2024).
    """

    paper = (
        "Liu et al., 'Continual learning and private unlearning', CoLLAs 2022; TOFU baseline "
        "(Maini et al. 2024): L = −γ·E_{D_f}[ℓ] + α·E_{D_r}[ℓ or KL(π_orig ‖ π_θ)]"
    )
    Config = GradDiffConfig

    def __init__(self, cfg: MethodConfig | None = None) -> None:
        super().__init__(cfg)
        self.kl_cache: ReferenceCache | None = None
        self.kl_model: nn.Module | None = None

    # -- structure --------------------------------------------------------------------------------
    @property
    def uses_retain(self) -> bool:
        return self.cfg.retain_loss != "none" and self.cfg.alpha != 0

    def streams(self, task: Task):
        if self.uses_retain:
            return {"forget": task.split.forget, "retain": task.split.retain}
        return {"forget": task.split.forget}

    def phases(self, epoch: int) -> list[Phase]:
        streams = ("forget", "retain") if self.uses_retain else ("forget",)
        return [Phase("unlearn", streams, self.loss, driver="forget")]

    def prepare(self, task: Task) -> None:
        self.kl_cache, self.kl_model = None, None
        if not (self.uses_retain and self.cfg.retain_loss == "kl"):
            return
        if self.cfg.kl_reference != "frozen":
            budget = None if self.cfg.kl_reference == "cache" else int(self.cfg.kl_cache_mb * 2**20)
            self.kl_cache = compute_reference(
                task.model,
                task.split.retain,
                lambda m, b: output_log_probs(task.family, m, b)[0],
                self.batch_sizes(task)["retain"],
                budget_bytes=budget,
            )
        if self.kl_cache is None:
            self.kl_model = frozen_copy(task.model)

    def finalize(self, task: Task) -> None:
        self.kl_cache, self.kl_model = None, None  # the original's outputs / copy are not needed any more

    # -- losses -----------------------------------------------------------------------------------
    def forget_term(self, batch: Batch, ctx: StepContext | None) -> tuple[torch.Tensor, dict[str, float]]:
        """The forget term to *minimise* (GA: −ℓ(θ; D_f))."""
        return -self.mean_loss(batch), {}

    def retain_term(self, batch: Batch) -> torch.Tensor:
        if self.cfg.retain_loss == "nll":
            return self.mean_loss(batch)
        logp, w = output_log_probs(self.family, self.model, batch)
        if self.kl_cache is not None:
            ref = self.kl_cache.get(batch["id"], "loss")[:, : logp.shape[1]].to(logp)  # batch's width
        else:
            assert self.kl_model is not None, "prepare() was not called"
            with torch.no_grad():
                ref, _ = output_log_probs(self.family, self.kl_model, batch)
        return kl_from_reference(ref, logp, w)

    def loss(
        self, b: dict[str, Batch], ctx: StepContext | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        lf, logs = self.forget_term(b["forget"], ctx)
        total = self.cfg.gamma * lf
        logs = {"forget_loss": float(lf.detach())} | logs
        if self.uses_retain:
            lr = self.retain_term(b["retain"])
            total = total + self.cfg.alpha * lr
            logs["retain_loss"] = float(lr.detach())
        return total, logs
