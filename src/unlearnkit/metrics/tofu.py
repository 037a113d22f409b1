"""TOFU metrics exactly as open-unlearning computes them (reference notes ``llm.md`` §2, "TOFU").

- **Probability** (``evaluate_probability``): per item exp(−NLL_sum(a|q)/|a|), the length-normalised
  P(a|q); the metric is the mean. On real authors and world facts the reported value is the normalised
  form P(a)/(P(a) + Σ_j P(perturbed_j)), all length-normalised (``probability_w_options``).
- **ROUGE**: greedy generation from the question prompt (``do_sample=False``, ``max_new_tokens=200``),
  left-padded; ``RougeScorer(["rougeL"], use_stemmer=True)``, **rougeL recall** against the ground-truth
  answer.
- **Truth Ratio**: TR = exp(−mean_j avgloss(perturbed_j)) / exp(−avgloss(correct)), where avgloss is the
  answer NLL divided by its length (so the numerator is the geometric mean of the perturbed answers'
  normalised probabilities). ``correct`` is the paraphrased answer on forget and retain, and the answer
  itself on real authors and world facts (open-unlearning ``ra_Truth_Ratio`` / ``wf_Truth_Ratio`` pre-compute
  ``*_Q_A_Prob``; legacy TOFU ``base_answer_key``). Aggregated as mean(min(TR, 1/TR)) on the forget set
  (``closer_to_1_better``) and mean(max(0, 1 − TR)) elsewhere (``true_better``). Computed as
  exp(avgloss_correct − mean_j avgloss_pert_j), which equals the ratio without its 1e-10 guard.
- **Forget Quality**: ``scipy.stats.ks_2samp(TR_unlearned_forget, TR_oracle_forget).pvalue``; the oracle's
  per-item forget truth ratios are an input (``None`` without them, as in open-unlearning issue #63).
- **Model Utility**: ``scipy.stats.hmean`` of nine values: retain {Prob, ROUGE, TR}, real authors
  {normalised Prob, ROUGE, TR}, world facts {normalised Prob, ROUGE, TR}.

Records are dicts ``{"question", "answer", "paraphrased_answer", "perturbed_answers": [str, ...]}``
(``perturbed_answer``, the hub's column name, is accepted too); the number of perturbed answers may
vary per item. A forget set of arbitrary questions of real TOFU may hold questions without perturbed
answers: with ``allow_missing_perturbed`` their truth ratio (and normalised probability) is NaN, the
aggregate truth ratio and forget quality use the other questions, and ``forget_missing_perturbed`` counts
them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import hmean, ks_2samp
from torch import nn

from unlearnkit.data.text import prompt_ids
from unlearnkit.errors import DataError
from unlearnkit.metrics.generation import generate_greedy
from unlearnkit.metrics.scoring import score_answer_sets

SPLITS = {"forget": "forget", "retain": "retain", "real_authors": "ra", "world_facts": "wf"}
UTILITY_KEYS = (
    "retain_prob",
    "retain_rouge",
    "retain_truth_ratio",
    "ra_prob_normalised",
    "ra_rouge",
    "ra_truth_ratio",
    "wf_prob_normalised",
    "wf_rouge",
    "wf_truth_ratio",
)


# -- pure functions on losses ---------------------------------------------------------------------------
def probability(nll_sum: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per-item length-normalised probability exp(−NLL_sum/|a|)."""
    return np.exp(-np.asarray(nll_sum, dtype=np.float64) / np.asarray(lengths, dtype=np.float64))


def normalised_probability(correct: np.ndarray, perturbed: Sequence[Sequence[float]]) -> np.ndarray:
    """Per item P(correct)/(P(correct) + Σ_j P(perturbed_j)) (open-unlearning adds 1e-10 to the
    denominator; so do we)."""
    correct = np.asarray(correct, dtype=np.float64)
    wrong = np.array([float(np.sum(p)) for p in perturbed], dtype=np.float64)
    return correct / (correct + wrong + 1e-10)


def truth_ratios(correct_avg_loss: np.ndarray, perturbed_avg_loss: Sequence[Sequence[float]]) -> np.ndarray:
    """Per item TR = exp(−mean_j avgloss_pert_j) / exp(−avgloss_correct) (losses length-normalised)."""
    correct = np.asarray(correct_avg_loss, dtype=np.float64)
    wrong = np.array([float(np.mean(p)) for p in perturbed_avg_loss], dtype=np.float64)
    return np.exp(correct - wrong)


def truth_ratio_forget(tr: np.ndarray) -> float:
    """Forget-set aggregation: mean(min(TR, 1/TR)) (1 when true and false answers are equally likely)."""
    tr = np.asarray(tr, dtype=np.float64)
    return float(np.mean(np.minimum(tr, 1.0 / tr)))


def truth_ratio_utility(tr: np.ndarray) -> float:
    """Retain / real-author / world-fact aggregation: mean(max(0, 1 − TR))."""
    return float(np.mean(np.maximum(0.0, 1.0 - np.asarray(tr, dtype=np.float64))))


def forget_quality(tr_forget: Sequence[float], oracle_tr_forget: Sequence[float] | None) -> float | None:
    """KS-test p-value between the unlearned and the oracle's per-item forget truth ratios."""
    if oracle_tr_forget is None:
        return None
    if len(oracle_tr_forget) == 0 and len(tr_forget) == 0:
        return None  # no forget question has perturbed answers (without_perturbed=partial)
    if len(oracle_tr_forget) == 0 or len(tr_forget) == 0:
        raise DataError("forget quality needs non-empty truth-ratio lists for the model and the oracle")
    return float(ks_2samp(np.asarray(tr_forget), np.asarray(oracle_tr_forget)).pvalue)


def model_utility(values: Mapping[str, float]) -> float:
    """Harmonic mean of the nine utility values (keys :data:`UTILITY_KEYS`)."""
    missing = [k for k in UTILITY_KEYS if k not in values]
    if missing:
        raise DataError(f"model utility needs {list(UTILITY_KEYS)}; missing {missing}")
    return float(hmean([values[k] for k in UTILITY_KEYS]))


def rouge_l_recall(generations: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per-item ROUGE-L recall of each generation against its reference (stemmer on, as TOFU)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return np.array(
        [scorer.score(ref, gen)["rougeL"].recall for gen, ref in zip(generations, references, strict=True)]
    )


# -- evaluation on a model ------------------------------------------------------------------------------
def _perturbed(record: Mapping[str, Any], split: str, i: int, allow_missing: bool = False) -> list[str]:
    pert = record.get("perturbed_answers", record.get("perturbed_answer"))
    if isinstance(pert, str):
        pert = [pert]
    if not pert and not allow_missing:
        raise DataError(f"TOFU {split} record {i} has no perturbed answers ('perturbed_answers' list)")
    return list(pert or [])


def _field(record: Mapping[str, Any], key: str, split: str, i: int) -> str:
    if key not in record:
        raise DataError(f"TOFU {split} record {i} has no {key!r} field (keys: {sorted(record)})")
    return str(record[key])


def evaluate_split(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[Mapping[str, Any]],
    split: str,
    batch_size: int = 32,
    max_new_tokens: int = 200,
    template: str | None = None,
    max_length: int = 512,
    allow_missing_perturbed: bool = False,
) -> dict[str, Any]:
    """Per-item probability, normalised probability, truth ratio, ROUGE-L recall and generation of one
    record set. ``correct`` for the truth ratio is the paraphrased answer on forget/retain, else the answer.
    With ``allow_missing_perturbed``, items without perturbed answers get a NaN truth ratio and normalised
    probability instead of an error.
    """
    if not records:
        raise DataError(f"the TOFU {split!r} record set is empty")
    correct_key = "paraphrased_answer" if split in ("forget", "retain") else "answer"
    qs = [_field(r, "question", split, i) for i, r in enumerate(records)]
    ans = [_field(r, "answer", split, i) for i, r in enumerate(records)]
    cor = [_field(r, correct_key, split, i) for i, r in enumerate(records)]
    perts = [_perturbed(r, split, i, allow_missing_perturbed) for i, r in enumerate(records)]
    # Every answer of a question (answer, paraphrase, perturbed answers) is scored from one encoding of
    # the question (metrics.scoring), in length-bucketed batches.
    n = len(qs)
    extra = correct_key != "answer"
    sets = [[a, c, *ps] if extra else [a, *ps] for a, c, ps in zip(ans, cor, perts, strict=True)]
    scored = score_answer_sets(model, tokenizer, qs, sets, batch_size, template, max_length)
    avgs = [nll / units for nll, units in scored]
    first = 2 if extra else 1
    pert_avg = [a[first:] for a in avgs]
    correct_avg = np.array([a[first - 1] for a in avgs])
    prob = np.exp(-np.array([a[0] for a in avgs]))
    has = np.array([len(ps) > 0 for ps in perts])
    norm_prob, tr = np.full(n, np.nan), np.full(n, np.nan)
    if has.any():
        with_pert = [p for p, h in zip(pert_avg, has, strict=True) if h]
        norm_prob[has] = normalised_probability(prob[has], [np.exp(-p) for p in with_pert])
        tr[has] = truth_ratios(correct_avg[has], with_pert)
    prompts = [prompt_ids(tokenizer, q, template) for q in qs]
    gens = [g.strip() for g in generate_greedy(model, tokenizer, prompts, max_new_tokens, batch_size)]
    return {
        "prob": prob,
        "prob_normalised": norm_prob,
        "truth_ratio": tr,
        "rouge": rouge_l_recall(gens, ans),
        "generations": gens,
    }


def evaluate_tofu(
    model: nn.Module,
    tokenizer: Any,
    eval_records: Mapping[str, Sequence[Mapping[str, Any]]],
    oracle_forget_tr: Sequence[float] | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 200,
    template: str | None = None,
    max_length: int = 512,
    allow_missing_perturbed: bool = False,
) -> dict[str, Any]:
    """TOFU forget metrics, the nine utility values, Forget Quality and Model Utility.

    ``eval_records`` maps ``"forget"``, ``"retain"``, ``"real_authors"``, ``"world_facts"`` to record
    lists (all four are required). Returns ``forget_prob``, ``forget_rouge``, ``forget_truth_ratio``
    (mean min(TR, 1/TR)), ``forget_quality`` (``None`` without ``oracle_forget_tr``), ``model_utility``,
    per split ``{forget,retain,ra,wf}_{prob,prob_normalised,rouge,truth_ratio}``, and the per-item
    forget truth ratios ``_forget_tr`` (store them when evaluating the oracle) and greedy answers
    ``_forget_generations``. ``allow_missing_perturbed`` lets forget items lack perturbed answers (see the
    module docstring); the other sets always need them.
    """
    missing = [s for s in SPLITS if s not in eval_records]
    if missing:
        raise DataError(
            f"TOFU evaluation needs record sets {list(SPLITS)}; missing {missing} (model utility is the "
            "harmonic mean over retain, real_authors and world_facts, so none of them can be skipped)"
        )
    out: dict[str, Any] = {}
    per_item: dict[str, dict[str, Any]] = {}
    for split, prefix in SPLITS.items():
        missing_ok = allow_missing_perturbed and split == "forget"
        res = evaluate_split(
            model, tokenizer, eval_records[split], split, batch_size, max_new_tokens, template, max_length,
            missing_ok,
        )  # fmt: skip
        per_item[split] = res
        out[f"{prefix}_prob"] = float(np.mean(res["prob"]))
        out[f"{prefix}_rouge"] = float(np.mean(res["rouge"]))
        if split == "forget":
            out |= forget_truth_ratio_values(res)
        else:
            out[f"{prefix}_prob_normalised"] = float(np.mean(res["prob_normalised"]))
            out[f"{prefix}_truth_ratio"] = truth_ratio_utility(res["truth_ratio"])
    out["forget_quality"] = forget_quality(out["_forget_tr"], oracle_forget_tr)
    out["model_utility"] = model_utility(out)
    out["_forget_generations"] = list(per_item["forget"]["generations"])
    return out


def forget_truth_ratio_values(res: Mapping[str, Any]) -> dict[str, Any]:
    """The forget set's truth-ratio entries of :func:`evaluate_split`'s result: ``forget_truth_ratio``,
    ``forget_prob_normalised`` and the per-item ``_forget_tr``, over the items that have perturbed answers
    (None when none has); ``forget_missing_perturbed`` counts the others when there are any."""
    tr = np.asarray(res["truth_ratio"], dtype=np.float64)
    known = ~np.isnan(tr)
    out: dict[str, Any] = {
        "forget_truth_ratio": truth_ratio_forget(tr[known]) if known.any() else None,
        "forget_prob_normalised": float(np.mean(res["prob_normalised"][known])) if known.any() else None,
        "_forget_tr": [float(t) for t in tr[known]],
    }
    if not known.all():
        out["forget_missing_perturbed"] = int((~known).sum())
    return out
