"""Suite-level evaluation of the text family: TOFU or MUSE metrics, compared with the oracle, and the
relearning attack (fine-tune the unlearned model on part of the forget set, then re-measure forgetting).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from unlearnkit.errors import UnlearnkitError

# The benchmarks' generation lengths: TOFU's ROUGE (open-unlearning ``generation_args``) and MUSE's
# VerbMem (``max_new_tokens=128``, also the ground-truth cut). ``eval.max_new_tokens`` /
# ``eval.verbmem_max_new_tokens`` override them; generation stops once every row has produced EOS.
TOFU_MAX_NEW_TOKENS = 200
MUSE_VERBMEM_MAX_NEW_TOKENS = 128
TOFU_FORGET_KEYS = ("forget_quality", "forget_truth_ratio", "forget_rouge", "forget_prob")
MUSE_FORGET_KEYS = ("verbmem_f", "knowmem_f", "privleak")


MUSE_EVAL_KEYS = {  # data loader's names -> metrics' names
    "verbmem_forget": "verbmem_f",
    "knowmem_forget": "knowmem_f",
    "knowmem_retain": "knowmem_r",
    "knowmem_icl": "knowmem_f_icl",
    "knowmem_retain_icl": "knowmem_r_icl",
    "forget_texts": "forget",
    "holdout_texts": "holdout",
}


def _benchmark(setup: Any) -> str:
    ev = setup.data.meta.get("eval") or {}
    bench = setup.data.meta.get("benchmark") or (
        "tofu" if "real_authors" in ev else "muse" if "verbmem_forget" in ev else None
    )
    if bench not in ("tofu", "muse"):
        raise UnlearnkitError(f"the text dataset {setup.data.name!r} names no benchmark (tofu or muse)")
    return bench


def evaluate_text(
    setup: Any, model: nn.Module, oracle: dict[str, Any] | str | None = None, forget_only: bool = False
) -> dict[str, Any]:
    """TOFU: forget quality needs the oracle's per-item forget truth ratios (``_forget_tr``);
    MUSE: PrivLeak needs the oracle's Min-40% AUC (``_auc``). ``oracle="self"`` compares with itself.

    TOFU prompts are formatted exactly as in training: the data's tokenizer and ``data.template``
    (``meta["template"]``) go through :mod:`unlearnkit.data.prompt_format`."""
    ev = setup.cfg.get("eval", {})
    tok = setup.data.meta["tokenizer"]
    records = setup.data.meta["eval"]
    bs = int(ev.get("batch_size", 32))
    if _benchmark(setup) == "tofu":
        info = setup.split.info if setup.split.kind == "ids" else {}
        partial = info.get("without_perturbed") == "partial"
        max_new = int(ev.get("max_new_tokens", TOFU_MAX_NEW_TOKENS))
        template = setup.data.meta.get("template")
        out = _tofu(model, tok, records, oracle, bs, max_new, forget_only, partial, template)
        return out | _ids_split_fields(info)
    return _muse(model, tok, records, oracle, bs, ev, forget_only)


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


def _muse(model, tok, records, oracle, bs: int, ev: dict, forget_only: bool) -> dict[str, Any]:
    from unlearnkit.metrics.muse import evaluate_muse, privleak

    ref_auc = None if oracle in (None, "self") else oracle.get("_auc")
    records = {MUSE_EVAL_KEYS.get(k, k): v for k, v in records.items()}
    metrics = ("verbmem_f", "knowmem_f", "privleak") if forget_only else None
    kw = {"metrics": metrics} if metrics else {}
    out = evaluate_muse(
        model,
        tok,
        records,
        ref_auc,
        batch_size=bs,
        verbmem_max_new_tokens=int(ev.get("verbmem_max_new_tokens", MUSE_VERBMEM_MAX_NEW_TOKENS)),
        **kw,
    )
    out["_auc"] = out.pop("auc")
    if oracle == "self":
        out["privleak"] = privleak(out["_auc"], out["_auc"])
    return out


def _tofu(
    model,
    tok,
    records,
    oracle,
    bs: int,
    max_new: int,
    forget_only: bool,
    partial: bool = False,
    template: str | None = None,
) -> dict[str, Any]:
    import numpy as np

    from unlearnkit.metrics import tofu

    ref = None if oracle in (None, "self") else oracle.get("_forget_tr")
    if forget_only:
        res = tofu.evaluate_split(
            model, tok, records["forget"], "forget", bs, max_new, template, allow_missing_perturbed=partial
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
    return out


def relearn_and_evaluate(
    setup: Any, model: nn.Module, oracle: dict[str, Any] | None, spec: dict[str, Any]
) -> dict[str, Any]:
    """Relearning attack: fine-tune a copy on a random part of the forget set, re-measure the forget
    metrics, and report them with the suffix ``_relearned``."""
    from unlearnkit.attacks.relearn import relearn

    relearned = relearn(model, setup.split.forget, setup.family, **spec)
    after = evaluate_text(setup, relearned, oracle, forget_only=True)
    keys = TOFU_FORGET_KEYS if _benchmark(setup) == "tofu" else MUSE_FORGET_KEYS
    return {f"{k}_relearned": after[k] for k in keys if k in after}
