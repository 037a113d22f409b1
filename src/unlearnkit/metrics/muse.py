"""MUSE metrics as muse_bench computes them (``eval.py``, ``metrics/*``; reference notes ``llm.md`` §2).

- **VerbMem** (``verbmem_f``): greedy continuation of each forget-passage prompt, ``max_new_tokens=128``;
  mean ROUGE-L **F1** (``use_stemmer=False``) against the ground truth cut to its first 128 tokens
  (``tokenizer(gt, add_special_tokens=True).input_ids[:128]`` decoded without special tokens), × 100.
- **KnowMem** (``knowmem_f`` on forget QA, ``knowmem_r`` on retain QA): few-shot prompt
  ``"Question: {q}\\nAnswer: {a}\\n\\n"`` per in-context example, then ``"Question: {q}\\nAnswer: "``;
  greedy, ``max_new_tokens=32``; output cut at ``"\\n\\n"``, ``"\\nQuestion"``, ``"Question:"``; mean
  ROUGE-L F1 × 100.
- **PrivLeak**: the Min-40% MIA score per text (−mean of its lowest 40% token log-probs, loss-like); AUC
  of forget texts (label 0) vs holdout texts (label 1), with ``-score`` as the classifier output
  (``roc_curve(y, -ppl)``), i.e. the probability that a holdout text looks *more* likely than a forget
  text. Chance is 0.5; a model that memorised the forget set gets an AUC near 0. Then
  ``PrivLeak = (AUC_unlearn − AUC_retrain) / AUC_retrain × 100`` with the oracle's AUC an input (muse_bench
  hard-codes News 0.4772, Books 0.5393). Strongly negative = under-unlearned, positive = over-unlearned.
  This AUC is 1 − :func:`unlearnkit.metrics.lm_mia.mia_auc` with the forget texts as members, the flip
  open-unlearning's ``privleak`` applies to its own ``mia_auc``.

The ``eval`` dict: ``verbmem_f`` (list of ``{"prompt", "gt"}``), ``knowmem_f`` / ``knowmem_r`` (lists of
``{"question", "answer"}``), optional ``knowmem_f_icl`` / ``knowmem_r_icl`` (in-context examples, same
shape), ``forget`` and ``holdout`` (lists of raw texts for PrivLeak).

Beyond muse_bench, the metrics open-unlearning adds to MUSE (``memorization`` and ``mia`` in ``metrics``):
Extraction Strength and Exact Memorization of each VerbMem passage's ground truth given its prompt,
teacher-forced (:func:`unlearnkit.metrics.memorization.continuation_memorization`; the whole ground truth,
not its first 128 tokens), and the LOSS, Min-40%, GradNorm and Reference attacks on PrivLeak's forget and
holdout texts as AUCs with the forget texts as members (:func:`unlearnkit.metrics.lm_mia.mia_auc`:
1 = memorised, 0.5 = indistinguishable; so ``mia_min_k`` = 1 − MUSE's ``auc``). The Reference attack needs
the oracle's per-text mean NLLs (``reference_nll``, stored as ``_mia_nll`` when the oracle is evaluated).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score
from torch import nn

from unlearnkit.errors import DataError
from unlearnkit.metrics.generation import generate_greedy, text_ids
from unlearnkit.metrics.lm_mia import mia_auc, mia_scores, reference_auc, text_gradnorm_scores
from unlearnkit.metrics.memorization import continuation_memorization

MUSE_METRICS = ("verbmem_f", "knowmem_f", "knowmem_r", "privleak", "memorization", "mia")
KNOWMEM_STOPS = ("\n\n", "\nQuestion", "Question:")
ICL_TEMPLATE = "Question: {question}\nAnswer: {answer}\n\n"
QUERY_TEMPLATE = "Question: {question}\nAnswer: "


def rouge_l_f1(generations: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per-item ROUGE-L F1 of each generation against its reference (no stemmer, as MUSE)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return np.array(
        [scorer.score(ref, gen)["rougeL"].fmeasure for gen, ref in zip(generations, references, strict=True)]
    )


def truncate_to_tokens(tokenizer: Any, text: str, n_tokens: int) -> str:
    """``text`` cut to its first ``n_tokens`` tokens (MUSE VerbMem's ground-truth truncation)."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"][:n_tokens]
    return tokenizer.decode(ids, skip_special_tokens=True)


def knowmem_prompt(question: str, icl: Sequence[Mapping[str, str]] = ()) -> str:
    """The few-shot KnowMem prompt for one question."""
    shots = "".join(ICL_TEMPLATE.format(question=ex["question"], answer=ex["answer"]) for ex in icl)
    return shots + QUERY_TEMPLATE.format(question=question)


def muse_auc(forget_scores: Sequence[float], holdout_scores: Sequence[float]) -> float:
    """MUSE's MIA AUC: labels forget 0 / holdout 1, classifier output −score (scores are loss-like)."""
    f, h = np.asarray(forget_scores, dtype=np.float64), np.asarray(holdout_scores, dtype=np.float64)
    if len(f) == 0 or len(h) == 0:
        raise DataError("PrivLeak needs non-empty forget and holdout text sets")
    y = np.concatenate([np.zeros(len(f)), np.ones(len(h))])
    return float(roc_auc_score(y, -np.concatenate([f, h])))


def privleak(auc: float, auc_retrain: float | None) -> float | None:
    """PrivLeak = (AUC − AUC_retrain) / AUC_retrain × 100 (``None`` without the oracle's AUC)."""
    if auc_retrain is None:
        return None
    if auc_retrain <= 0:  # the oracle separates forget from holdout perfectly: PrivLeak is undefined
        return None
    return float((auc - auc_retrain) / auc_retrain * 100.0)


def _records(data: Mapping[str, Any], key: str, fields: Sequence[str]) -> list[Mapping[str, Any]]:
    if key not in data:
        raise DataError(f"MUSE evaluation needs {key!r} in the eval data (keys given: {sorted(data)})")
    recs = list(data[key])
    if not recs:
        raise DataError(f"the MUSE {key!r} set is empty")
    for i, r in enumerate(recs):
        miss = [f for f in fields if f not in r]
        if miss:
            raise DataError(f"MUSE {key} record {i} lacks {miss}")
    return recs


def verbmem(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[Mapping[str, str]],
    max_new_tokens: int = 128,
    batch_size: int = 8,
) -> float:
    """VerbMem: mean ROUGE-L F1 × 100 of greedy continuations vs the truncated ground truth."""
    prompts = [text_ids(tokenizer, r["prompt"]) for r in records]
    gens = generate_greedy(model, tokenizer, prompts, max_new_tokens, batch_size)
    gts = [truncate_to_tokens(tokenizer, r["gt"], max_new_tokens) for r in records]
    return float(np.mean(rouge_l_f1(gens, gts)) * 100.0)


def knowmem(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[Mapping[str, str]],
    icl: Sequence[Mapping[str, str]] = (),
    max_new_tokens: int = 32,
    batch_size: int = 8,
) -> float:
    """KnowMem: mean ROUGE-L F1 × 100 of few-shot greedy answers cut at the stop strings."""
    prompts = [text_ids(tokenizer, knowmem_prompt(r["question"], icl)) for r in records]
    gens = generate_greedy(model, tokenizer, prompts, max_new_tokens, batch_size, KNOWMEM_STOPS)
    return float(np.mean(rouge_l_f1(gens, [r["answer"] for r in records])) * 100.0)


def evaluate_muse(
    model: nn.Module,
    tokenizer: Any,
    eval: Mapping[str, Any],
    oracle_auc: float | None = None,
    batch_size: int = 8,
    verbmem_max_new_tokens: int = 128,
    knowmem_max_new_tokens: int = 32,
    k: float = 0.4,
    metrics: Sequence[str] = MUSE_METRICS,
    max_length: int | None = None,
    reference_nll: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """MUSE's four metrics and open-unlearning's additions. Returns ``verbmem_f``, ``knowmem_f``,
    ``knowmem_r`` (ROUGE × 100), ``privleak`` (``None`` without ``oracle_auc``) and ``auc`` (MUSE's
    forget-vs-holdout Min-k AUC; store it when evaluating the oracle); with ``memorization``,
    ``forget_extraction_strength`` and ``forget_exact_memorization``; with ``mia``, ``mia_loss``,
    ``mia_min_k``, ``mia_gradnorm``, ``mia_reference`` (given ``reference_nll``) and ``_mia_nll`` (this
    model's per-text mean NLLs); for the metrics asked for in ``metrics``.
    """
    unknown = [m for m in metrics if m not in MUSE_METRICS]
    if unknown:
        raise DataError(f"unknown MUSE metric(s) {unknown}: choose from {list(MUSE_METRICS)}")
    out: dict[str, Any] = {}
    if "verbmem_f" in metrics:
        recs = _records(eval, "verbmem_f", ("prompt", "gt"))
        out["verbmem_f"] = verbmem(model, tokenizer, recs, verbmem_max_new_tokens, batch_size)
    for name in ("knowmem_f", "knowmem_r"):
        if name in metrics:
            recs = _records(eval, name, ("question", "answer"))
            icl = list(eval.get(f"{name}_icl", ()))
            out[name] = knowmem(model, tokenizer, recs, icl, knowmem_max_new_tokens, batch_size)
    if "memorization" in metrics:
        recs = _records(eval, "verbmem_f", ("prompt", "gt"))
        prompts, gts = [r["prompt"] for r in recs], [r["gt"] for r in recs]
        res = continuation_memorization(model, tokenizer, prompts, gts, batch_size, max_length)
        out |= {f"forget_{name}": float(np.mean(v)) for name, v in res.items()}
    if "privleak" in metrics or "mia" in metrics:
        forget, holdout = eval.get("forget"), eval.get("holdout")
        if not forget or not holdout:
            raise DataError("PrivLeak needs non-empty 'forget' and 'holdout' lists of texts in the eval data")
        attacks = ("loss", "min_k")
        f = mia_scores(model, tokenizer, forget, attacks, k, batch_size, max_length)
        h = mia_scores(model, tokenizer, holdout, attacks, k, batch_size, max_length)
        if "privleak" in metrics:
            out["auc"] = muse_auc(f["min_k"], h["min_k"])
            out["privleak"] = privleak(out["auc"], oracle_auc)
        if "mia" in metrics:
            out |= {f"mia_{a}": mia_auc(f[a], h[a]) for a in attacks}
            out["mia_gradnorm"] = mia_auc(
                text_gradnorm_scores(model, tokenizer, forget, max_length),
                text_gradnorm_scores(model, tokenizer, holdout, max_length),
            )
            nll = {"forget": f["loss"], "holdout": h["loss"]}
            if reference_nll is not None:
                out["mia_reference"] = reference_auc(nll, reference_nll)
            out["_mia_nll"] = {name: [float(v) for v in values] for name, values in nll.items()}
    return out
