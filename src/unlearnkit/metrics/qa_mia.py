"""Membership inference on question-answer pairs (TOFU's forget vs holdout): LOSS, Min-K%, Reference and
GradNorm attacks, and PrivLeak, as open-unlearning defines them (``src/evals/metrics/mia/``, llm.md
"Metrics").

Every attack scores the answer tokens of a (question, answer) pair, teacher-forced and tokenised as every
TOFU metric is (:func:`~unlearnkit.data.text.encode_pairs`). Scores are loss-like (lower = more
member-like):

- ``loss``: the mean answer-token NLL (Yeom et al., 2018).
- ``min_k``: −mean of the lowest max(1, ⌊k·L⌋) token log-probabilities, k = 0.4 (Shi et al., 2024).
- ``reference``: mean NLL under the model − mean NLL under a reference model (Carlini et al., 2022's
  reference-model calibration; open-unlearning's ``mia_reference`` with the retain model as reference).
  The reference's per-item NLLs are an input: computed once on the oracle and stored with its results
  (``_mia_nll``), so no second model is loaded to evaluate a method.
- ``gradnorm``: the mean over parameter tensors of ‖∇_θ ℓ‖₂, ℓ = −mean answer-token log p, one item at a
  time (open-unlearning's ``mia_gradnorm``; not a global norm). Gradients are taken with
  ``torch.autograd.grad`` in eval mode (no dropout; the reference code switches to train mode), so the
  model's ``.grad`` fields are left alone.

The AUC labels the forget items members (:func:`~unlearnkit.metrics.lm_mia.mia_auc`: 1 = the forget set is
separated as more likely, 0.5 = indistinguishable, as open-unlearning's forget-0 / holdout-1 AUC over the
loss-like scores). PrivLeak (Shi et al., MUSE, 2024) compares the Min-K% AUC with the oracle's:
PL = ((1 − AUC) − (1 − AUC_oracle)) / (1 − AUC_oracle) × 100, which is MUSE's formula on MUSE's AUC = 1 − AUC
(:func:`unlearnkit.metrics.muse.privleak`): 0 for the oracle, −100 when the forget set is still fully
memorised, > 0 when over-unlearned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from unlearnkit.data.text import encode_pairs
from unlearnkit.errors import DataError
from unlearnkit.families.text import token_logprobs
from unlearnkit.metrics.generation import eval_mode, model_device
from unlearnkit.metrics.lm_mia import gradnorm_scores, loss_score, mia_auc, min_k_score, reference_auc
from unlearnkit.metrics.muse import privleak


def answer_logprobs(
    model: nn.Module,
    tokenizer: Any,
    questions: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 32,
    template: str | None = None,
    max_length: int = 512,
) -> list[np.ndarray]:
    """Per pair, log p_θ(y_t | x, y_<t) of each answer token (float64)."""
    if len(questions) != len(answers):
        raise DataError(f"{len(questions)} questions but {len(answers)} answers")
    out: list[np.ndarray] = [np.zeros(0)] * len(questions)
    device = model_device(model)
    order = sorted(range(len(questions)), key=lambda i: len(questions[i]) + len(answers[i]))
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            cols = encode_pairs(
                tokenizer, [questions[i] for i in idx], [answers[i] for i in idx], max_length, template
            )
            lp, mask = token_logprobs(model, {k: v.to(device) for k, v in cols.items()})
            for r, i in enumerate(idx):
                out[i] = lp[r][mask[r]].double().cpu().numpy()
    return out


def qa_gradnorm_scores(
    model: nn.Module,
    tokenizer: Any,
    questions: Sequence[str],
    answers: Sequence[str],
    template: str | None = None,
    max_length: int = 512,
) -> np.ndarray:
    """Per pair, :func:`~unlearnkit.metrics.lm_mia.gradnorm_scores` of ℓ = −mean answer-token log p."""
    device = model_device(model)

    def loss_of(pair: tuple[str, str]) -> torch.Tensor:
        cols = encode_pairs(tokenizer, [pair[0]], [pair[1]], max_length, template)
        lp, mask = token_logprobs(model, {k: v.to(device) for k, v in cols.items()})
        return -lp.sum() / mask.sum().clamp_min(1)

    return gradnorm_scores(model, list(zip(questions, answers, strict=True)), loss_of)


def _pairs(records: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    return [str(r["question"]) for r in records], [str(r["answer"]) for r in records]


def qa_mia(
    model: nn.Module,
    tokenizer: Any,
    forget: Sequence[Mapping[str, Any]],
    holdout: Sequence[Mapping[str, Any]],
    reference_nll: Mapping[str, Sequence[float]] | None = None,
    batch_size: int = 32,
    k: float = 0.4,
    gradnorm: bool = True,
    template: str | None = None,
) -> dict[str, Any]:
    """AUCs ``mia_loss``, ``mia_min_k``, ``mia_gradnorm`` and (given the reference's per-item mean NLLs
    ``{"forget": [...], "holdout": [...]}``) ``mia_reference``, plus this model's per-item mean NLLs
    ``_mia_nll`` (store them when evaluating the oracle: they are the next evaluations' reference)."""
    if not forget or not holdout:
        raise DataError("membership inference needs non-empty forget and holdout question sets")
    scores: dict[str, dict[str, np.ndarray]] = {"loss": {}, "min_k": {}, "gradnorm": {}}
    for name, records in (("forget", forget), ("holdout", holdout)):
        qs, ans = _pairs(records)
        lps = answer_logprobs(model, tokenizer, qs, ans, batch_size, template)
        scores["loss"][name] = np.array([loss_score(lp) for lp in lps])
        scores["min_k"][name] = np.array([min_k_score(lp, k) for lp in lps])
        if gradnorm:
            scores["gradnorm"][name] = qa_gradnorm_scores(model, tokenizer, qs, ans, template)
    out: dict[str, Any] = {f"mia_{a}": mia_auc(s["forget"], s["holdout"]) for a, s in scores.items() if s}
    nll = {name: scores["loss"][name] for name in ("forget", "holdout")}
    if reference_nll is not None:
        out["mia_reference"] = reference_auc(nll, reference_nll)
    out["_mia_nll"] = {name: [float(v) for v in values] for name, values in nll.items()}
    return out


def tofu_privleak(auc_min_k: float, oracle_auc_min_k: float | None) -> float | None:
    """((1 − AUC) − (1 − AUC_oracle)) / (1 − AUC_oracle) × 100 (``None`` without the oracle's AUC)."""
    if oracle_auc_min_k is None:
        return None
    return privleak(1.0 - auc_min_k, 1.0 - oracle_auc_min_k)
