"""Membership-inference scores for causal LMs: LOSS, zlib, Min-K% and Min-K%++ (batched).

Every text is tokenised as BOS + its tokens (:func:`~unlearnkit.metrics.generation.text_ids`, like a
Llama tokenizer with special tokens), truncated to the model's position limit, and every token after
BOS is scored: log p(x_t | x_<t). All scores are **loss-like: lower means "more likely a member"**,
as in open-unlearning (``src/evals/metrics/mia/*``) and muse_bench (``metrics/privleak.py``):

- ``loss``: mean token NLL, −(1/n) Σ_t log p(x_t) (Yeom et al.).
- ``zlib``: mean token NLL / ``len(zlib.compress(text.encode("utf-8")))`` (Carlini et al. 2021;
  muse_bench ``PPL/zlib``).
- ``min_k``: −mean of the lowest ⌊k·n⌋ token log-probs (at least one), k = 0.4 by default (Shi et al.
  2024; MUSE's ``Min-40%``).
- ``min_k++``: per token z_t = (log p(x_t) − μ_t)/σ_t, with μ_t = E_{z∼p(·|x_<t)} log p(z) and
  σ_t² = E[(log p(z) − μ_t)²] under the model's next-token distribution (σ_t² clamped at 1e-6 as in
  open-unlearning); score −mean of the lowest ⌊k·n⌋ z_t (Zhang et al. 2024).

:func:`mia_auc` takes member and non-member scores and returns the attack's ROC AUC with members as the
positive class and −score as the classifier output: 1 = members perfectly separated (more likely than
non-members), 0.5 = chance. (MUSE's PrivLeak AUC uses the opposite labelling, see
:mod:`unlearnkit.metrics.muse`.)
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from unlearnkit.errors import ConfigError, DataError
from unlearnkit.families.text_nll import token_nll, vocab_moments
from unlearnkit.metrics.generation import eval_mode, model_device, pad_token_id, position_limit, text_ids

ATTACKS = ("loss", "zlib", "min_k", "min_k++")


def _lowest_k_mean(values: np.ndarray, k: float) -> float:
    if len(values) == 0:
        return float("nan")
    n = max(1, int(len(values) * k))
    return float(np.mean(np.sort(values)[:n]))


def loss_score(logp: np.ndarray) -> float:
    return float(-np.mean(logp)) if len(logp) else float("nan")


def zlib_score(logp: np.ndarray, text: str) -> float:
    return loss_score(logp) / len(zlib.compress(text.encode("utf-8")))


def min_k_score(logp: np.ndarray, k: float = 0.4) -> float:
    return -_lowest_k_mean(np.asarray(logp, dtype=np.float64), k)


def min_k_plus_plus_score(logp: np.ndarray, mu: np.ndarray, var: np.ndarray, k: float = 0.4) -> float:
    z = (np.asarray(logp) - np.asarray(mu)) / np.sqrt(np.maximum(np.asarray(var), 1e-6))
    return -_lowest_k_mean(z.astype(np.float64), k)


def token_stats(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int = 8,
    max_length: int | None = None,
    vocab_stats: bool = False,
) -> list[dict[str, np.ndarray]]:
    """Per text: ``logp`` (log p of each token after BOS) and, with ``vocab_stats``, the mean ``mu`` and
    variance ``var`` of log p over the vocabulary under the next-token distribution at each position."""
    limit = max_length or position_limit(model)
    seqs = [text_ids(tokenizer, t)[:limit] if limit else text_ids(tokenizer, t) for t in texts]
    pad = pad_token_id(tokenizer)
    device = model_device(model)
    out: list[dict[str, np.ndarray]] = [{} for _ in texts]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(seqs[i]) for i in idx)
            ids = torch.full((len(idx), max(width, 1)), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, i in enumerate(idx):
                ids[r, : len(seqs[i])] = torch.as_tensor(seqs[i], dtype=torch.long)
                mask[r, : len(seqs[i])] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
            target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            lp = -token_nll(logits, target)  # contiguous rows, chunked: no [B, T, V] float32 copy
            if vocab_stats:
                mu, var = vocab_moments(logits, target != -100)
            for r, i in enumerate(idx):
                n = max(len(seqs[i]) - 1, 0)
                stats = {"logp": lp[r, :n].double().cpu().numpy()}
                if vocab_stats:
                    stats["mu"] = mu[r, :n].double().cpu().numpy()
                    stats["var"] = var[r, :n].double().cpu().numpy()
                out[i] = stats
    return out


def mia_scores(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    attacks: Sequence[str] = ATTACKS,
    k: float = 0.4,
    batch_size: int = 8,
    max_length: int | None = None,
) -> dict[str, np.ndarray]:
    """Loss-like scores (lower = more member-like) of each text under each attack in ``attacks``."""
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise ConfigError(f"unknown LM MIA attack(s) {unknown}: choose from {list(ATTACKS)}")
    if not 0 < k <= 1:
        raise ConfigError(f"k is a fraction of the tokens in (0, 1], got {k}")
    stats = token_stats(model, tokenizer, texts, batch_size, max_length, vocab_stats="min_k++" in attacks)
    fns = {
        "loss": lambda s, t: loss_score(s["logp"]),
        "zlib": lambda s, t: zlib_score(s["logp"], t),
        "min_k": lambda s, t: min_k_score(s["logp"], k),
        "min_k++": lambda s, t: min_k_plus_plus_score(s["logp"], s["mu"], s["var"], k),
    }
    return {
        a: np.array([fns[a](s, t) for s, t in zip(stats, texts, strict=True)], dtype=np.float64)
        for a in attacks
    }


def mia_auc(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> float:
    """ROC AUC of telling members from non-members by low score: members labelled 1, output −score."""
    m, n = np.asarray(member_scores, dtype=np.float64), np.asarray(nonmember_scores, dtype=np.float64)
    if len(m) == 0 or len(n) == 0:
        raise DataError("an MIA AUC needs at least one member and one non-member score")
    y = np.concatenate([np.ones(len(m)), np.zeros(len(n))])
    return float(roc_auc_score(y, -np.concatenate([m, n])))


def gradnorm_scores(
    model: nn.Module, items: Sequence[Any], loss_of: Callable[[Any], torch.Tensor]
) -> np.ndarray:
    """Per item, the mean over the model's parameter tensors of ‖∇_θ loss_of(item)‖₂ (open-unlearning's
    ``mia_gradnorm``: a mean of per-tensor norms, not a global norm), one item at a time, in eval mode.

    Every parameter counts, whatever a method left trainable (RMU trains one layer, LoRA only adapters):
    the attack must score every model on the same parameters. Gradients come from ``torch.autograd.grad``,
    so ``.grad`` fields are untouched, and the ``requires_grad`` flags are restored."""
    params = list(model.parameters())
    if not params:
        raise DataError("the GradNorm attack needs a model with parameters")
    flags = [p.requires_grad for p in params]
    was_training = model.training
    for p in params:
        p.requires_grad_(True)
    model.eval()
    try:
        scores = []
        with torch.enable_grad():
            for item in items:
                grads = torch.autograd.grad(loss_of(item), params, allow_unused=True)
                scores.append(float(torch.stack([g.float().norm() for g in grads if g is not None]).mean()))
    finally:
        model.train(was_training)
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
    return np.array(scores, dtype=np.float64)


def text_gradnorm_scores(
    model: nn.Module, tokenizer: Any, texts: Sequence[str], max_length: int | None = None
) -> np.ndarray:
    """GradNorm of raw texts: ℓ = mean NLL of every token after BOS, tokenised as :func:`token_stats`."""
    limit = max_length or position_limit(model)
    device = model_device(model)

    def loss_of(text: str) -> torch.Tensor:
        ids = text_ids(tokenizer, text)
        ids = torch.as_tensor(ids[:limit] if limit else ids, dtype=torch.long, device=device)[None]
        if ids.shape[1] < 2:
            raise DataError(f"GradNorm needs texts of at least one token, got {text[:40]!r}")
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, :-1]
        return token_nll(logits, ids[:, 1:]).mean()

    return gradnorm_scores(model, texts, loss_of)


def reference_auc(nll: Mapping[str, Sequence[float]], reference_nll: Mapping[str, Sequence[float]]) -> float:
    """The Reference attack's AUC (Carlini et al., 2022; open-unlearning's ``mia_reference``): score = mean
    NLL under the model − mean NLL under the reference model, per item of ``{"forget", "holdout"}``, the
    forget items as members (:func:`mia_auc`). The reference's NLLs were computed once on the oracle."""
    ref = {n: np.asarray(reference_nll[n], dtype=np.float64) for n in ("forget", "holdout")}
    own = {n: np.asarray(nll[n], dtype=np.float64) for n in ("forget", "holdout")}
    if any(len(ref[n]) != len(own[n]) for n in own):
        raise DataError(
            "the reference NLLs were computed on other forget/holdout sets than this evaluation's: "
            "re-evaluate the oracle on this split"
        )
    return mia_auc(own["forget"] - ref["forget"], own["holdout"] - ref["holdout"])
