"""The language-model protocols: TOFU (Maini et al., 2024) and MUSE (Shi et al., 2024), each compared with
its oracle (forget quality from the oracle's forget truth ratios; PrivLeak from the oracle's Min-40% AUC)
and attacked by relearning (fine-tune the unlearned model on part of the forget set, then re-measure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from unlearnkit.attacks.relearn import relearn
from unlearnkit.errors import ConfigError
from unlearnkit.metrics import tofu
from unlearnkit.metrics.harness import LmEvalConfig
from unlearnkit.metrics.memorization import memorization_scores
from unlearnkit.metrics.muse import evaluate_muse, privleak
from unlearnkit.metrics.qa_mia import qa_mia, tofu_privleak
from unlearnkit.protocols.base import EvalConfig, Result
from unlearnkit.protocols.harness import HarnessProtocol
from unlearnkit.registry import register_protocol

MUSE_EVAL_KEYS = {  # data loader's names -> metrics' names
    "verbmem_forget": "verbmem_f",
    "knowmem_forget": "knowmem_f",
    "knowmem_retain": "knowmem_r",
    "knowmem_icl": "knowmem_f_icl",
    "knowmem_retain_icl": "knowmem_r_icl",
    "forget_texts": "forget",
    "holdout_texts": "holdout",
}


class _TextProtocol(HarnessProtocol):
    def relearn(
        self, exp: Any, model: nn.Module, oracle: dict[str, Any] | None, spec: dict[str, Any]
    ) -> dict[str, Any]:
        relearned = relearn(model, exp.split.forget, exp.family, **spec)
        after = self.evaluate_forget(exp, relearned, oracle).flat()
        return {f"{k}_relearned": after[k] for k in self.forget_keys if k in after}

    def evaluate(
        self, exp: Any, model: nn.Module, oracle: dict[str, Any] | str | None = None, original: Any = None
    ) -> Result:
        res = self._run(exp, model, oracle, forget_only=False)
        return Result(res.public | self.harness_metrics(exp, model), res.private)

    def evaluate_forget(self, exp: Any, model: nn.Module, oracle: dict[str, Any] | str | None) -> Result:
        """The forget-side metrics only (what the relearning attack re-measures)."""
        return self._run(exp, model, oracle, forget_only=True)

    def _run(self, exp: Any, model: nn.Module, oracle: Any, forget_only: bool) -> Result:
        raise NotImplementedError


def _at_least_one(**values: int) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"eval.{name} must be an integer >= 1, got {v!r}")


@dataclass
class TofuEval(EvalConfig):
    """``max_new_tokens``: greedy answer length for ROUGE (TOFU's 200, open-unlearning's
    ``generation_args``; generation stops once every row has produced EOS); ``batch_size``: scoring batch;
    ``lm_eval``: lm-evaluation-harness tasks also run on the model (:mod:`unlearnkit.metrics.harness`)."""

    batch_size: int = 32
    max_new_tokens: int = 200
    lm_eval: LmEvalConfig | None = None

    def check(self) -> None:  # before training: these were refused only when the model was evaluated
        _at_least_one(batch_size=self.batch_size, max_new_tokens=self.max_new_tokens)


@register_protocol("tofu")
class Tofu(_TextProtocol):
    Config = TofuEval
    headline = ("forget_quality", "model_utility", "forget_truth_ratio", "forget_rouge", "forget_prob", "RTE")
    forget_keys = (
        "forget_quality",
        "forget_truth_ratio",
        "forget_rouge",
        "forget_prob",
        "forget_extraction_strength",
        "forget_exact_memorization",
    )
    axes = ("forget_quality", "model_utility")
    gap_key = "forget_quality"
    caption = (
        "forget_quality = KS-test p-value of forget truth ratios vs the oracle's (higher is better); "
        "model_utility = harmonic mean of the nine TOFU utility values; RTE in seconds."
    )

    def _run(self, exp: Any, model: nn.Module, oracle: Any, forget_only: bool) -> Result:
        """TOFU prompts are formatted exactly as in training: the data's tokenizer and ``data.template``
        (``meta["template"]``) go through :mod:`unlearnkit.data.prompt_format`."""
        tok, records = exp.data.meta["tokenizer"], exp.data.meta["eval"]
        template = exp.data.meta.get("template")
        bs, max_new = self.cfg.batch_size, self.cfg.max_new_tokens
        info = exp.split.info if exp.split.kind == "ids" else {}
        partial = info.get("without_perturbed") == "partial"
        ref = None if oracle in (None, "self") else oracle.get("_forget_tr")
        if forget_only:
            res = tofu.evaluate_split(
                model,
                tok,
                records["forget"],
                "forget",
                bs,
                max_new,
                template,
                allow_missing_perturbed=partial,
            )
            out = {
                "forget_prob": float(np.mean(res["prob"])),
                "forget_rouge": float(np.mean(res["rouge"])),
            } | tofu.forget_truth_ratio_values(res)
            out.pop("forget_prob_normalised", None)
            out["forget_quality"] = tofu.forget_quality(out["_forget_tr"], ref)
        else:
            out = tofu.evaluate_tofu(
                model,
                tok,
                records,
                ref,
                batch_size=bs,
                max_new_tokens=max_new,
                template=template,
                allow_missing_perturbed=partial,
            )
        if oracle == "self":
            out["forget_quality"] = tofu.forget_quality(out["_forget_tr"], out["_forget_tr"])
        if not forget_only and records.get("holdout"):
            out |= _tofu_mia(model, tok, records, oracle, bs, template)
        out |= _memorization(model, tok, records["forget"], bs, template)
        return Result.from_flat(out | _ids_split_fields(info))


def _tofu_mia(
    model: nn.Module, tok: Any, records: dict, oracle: Any, bs: int, template: str | None
) -> dict[str, Any]:
    """Forget-vs-holdout MIAs; the Reference attack and PrivLeak use the oracle's stored values."""
    ref = oracle.get("_mia_nll") if isinstance(oracle, dict) else None
    out = qa_mia(model, tok, records["forget"], records["holdout"], ref, bs, template=template)
    if oracle == "self":
        out["mia_reference"] = 0.5  # scored against itself: every score is 0
        ref_auc = out["mia_min_k"]
    else:
        ref_auc = oracle.get("mia_min_k") if isinstance(oracle, dict) else None
    out["privleak"] = tofu_privleak(out["mia_min_k"], ref_auc)
    return out


def _memorization(
    model: nn.Module, tok: Any, records: list, bs: int, template: str | None
) -> dict[str, float]:
    """Mean extraction strength and exact memorization of the forget answers (teacher-forced)."""
    qs, ans = [r["question"] for r in records], [r["answer"] for r in records]
    res = memorization_scores(model, tok, qs, ans, bs, template=template)
    return {f"forget_{k}": float(np.mean(v)) for k, v in res.items()}


def _ids_split_fields(info: dict[str, Any]) -> dict[str, Any]:
    """For a forget set of listed questions (``split.kind=ids``): how many retain-evaluation questions were
    dropped because they are forgotten, the retain evaluation's size, and (``without_perturbed=partial``)
    how many forget questions have no perturbed answers."""
    if "retain_eval_size" not in info:
        return {}
    out = {
        "retain_eval_dropped": len(info["retain_eval_dropped"]),
        "retain_eval_size": info["retain_eval_size"],
    }
    if info.get("forget_missing_perturbed"):
        out["forget_missing_perturbed"] = len(info["forget_missing_perturbed"])
    return out


@dataclass
class MuseEval(EvalConfig):
    """``verbmem_max_new_tokens``: continuation length of VerbMem (MUSE's 128, also its ground-truth cut);
    ``batch_size``: scoring batch; ``lm_eval``: lm-evaluation-harness tasks also run on the model."""

    batch_size: int = 32
    verbmem_max_new_tokens: int = 128
    lm_eval: LmEvalConfig | None = None

    def check(self) -> None:
        _at_least_one(batch_size=self.batch_size, verbmem_max_new_tokens=self.verbmem_max_new_tokens)


@register_protocol("muse")
class Muse(_TextProtocol):
    Config = MuseEval
    headline = ("verbmem_f", "knowmem_f", "knowmem_r", "privleak", "RTE")
    forget_keys = (
        "verbmem_f",
        "knowmem_f",
        "privleak",
        "forget_extraction_strength",
        "forget_exact_memorization",
    )
    axes = ("verbmem_f", "knowmem_r")
    gap_key = "privleak"
    caption = (
        "verbmem_f = VerbMem on the forget set, knowmem_f / knowmem_r = KnowMem on forget / retain QA "
        "(ROUGE-L F1 x 100); privleak = relative Min-40% AUC gap to the oracle (0 = like the oracle); "
        "extraction strength and exact memorization of the forget passages (teacher-forced greedy tokens; "
        "lower = more forgotten); mia_* = forget-vs-holdout membership AUCs (0.5 = indistinguishable; "
        "reference = calibrated by the oracle's NLLs)."
    )

    def _run(self, exp: Any, model: nn.Module, oracle: Any, forget_only: bool) -> Result:
        return self.score(model, exp.data.meta["tokenizer"], exp.data.meta["eval"], oracle, forget_only)

    def score(
        self, model: nn.Module, tok: Any, records: dict[str, Any], oracle: Any, forget_only: bool = False
    ) -> Result:
        """MUSE's metrics on given evaluation records (the loader's names), e.g. a sequential suite's
        forget-side sets cut to the articles forgotten so far."""
        stored = isinstance(oracle, dict)
        ref_auc = oracle.get("_auc") if stored else None
        ref_nll = oracle.get("_mia_nll") if stored else None
        records = {MUSE_EVAL_KEYS.get(k, k): v for k, v in records.items()}
        kw = {"metrics": ("verbmem_f", "knowmem_f", "privleak", "memorization")} if forget_only else {}
        out = evaluate_muse(
            model,
            tok,
            records,
            ref_auc,
            batch_size=self.cfg.batch_size,
            verbmem_max_new_tokens=self.cfg.verbmem_max_new_tokens,
            reference_nll=ref_nll,
            **kw,
        )
        out["_auc"] = out.pop("auc")
        if oracle == "self":
            out["privleak"] = privleak(out["_auc"], out["_auc"])
            if "mia_loss" in out:
                out["mia_reference"] = 0.5  # scored against itself: every score is 0
        return Result.from_flat(out)
