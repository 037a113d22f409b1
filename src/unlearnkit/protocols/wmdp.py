"""The WMDP protocol (Li et al., 2024): hazardous-knowledge accuracy after unlearning, and general utility.

Forgetting: zero-shot multiple-choice accuracy on WMDP-Bio / -Cyber (/ -Chem), scored as
lm-evaluation-harness scores its ``wmdp_*`` tasks (:mod:`unlearnkit.metrics.multiple_choice`), in percent;
lower is better after unlearning, chance is 25% (RMU on Zephyr-7B: Bio 63.7 -> 31.2, Cyber 44.0 -> 28.2).

Utility: the papers report MMLU through lm-evaluation-harness (RMU: 58.1 -> 57.1). ``eval.mmlu=PATH`` (a
local MMLU folder, :mod:`unlearnkit.data.mmlu`, or the hub id ``cais/mmlu``) scores it the same way (same
4-choice prompt with each question's subject; the mean over all questions, LMH's size-weighted ``mmlu``
group); a generated world may ship its own control set (``meta["mmlu"]``,
:mod:`unlearnkit.data.synthetic_wmdp`), scored the same way unless ``eval.mmlu`` names another. Without
one, the built-in utility is ``retain_ppl``: the perplexity exp(Σ NLL / Σ tokens) of the held-out
retain-corpus documents (the data's test set, never trained on), chosen because it needs no extra data,
costs one forward pass over a few documents, and moves when unlearning damages language modelling in the
retain domain (the RMU retain term protects it). ``eval.retain_ppl=false`` skips it.

``eval.max_items`` scores a fixed-seed sample of each question set (and of MMLU) instead of all of it.
There is no oracle comparison (no retrained model is a reference for WMDP); the relearning attack
fine-tunes on part of the forget corpus and re-measures the WMDP accuracies (``*_relearned``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from unlearnkit.attacks.relearn import relearn
from unlearnkit.data.examples import ExampleSet
from unlearnkit.data.mmlu import load_mmlu
from unlearnkit.data.wmdp import SUBSETS
from unlearnkit.errors import ConfigError
from unlearnkit.metrics.generation import eval_mode, model_device
from unlearnkit.metrics.harness import LmEvalConfig
from unlearnkit.metrics.multiple_choice import mc_accuracy
from unlearnkit.protocols.base import EvalConfig, Result
from unlearnkit.protocols.harness import HarnessProtocol
from unlearnkit.registry import register_protocol


@dataclass
class WmdpEval(EvalConfig):
    """``subsets``: the WMDP question sets scored (bio, cyber, chem); ``batch_size``: continuations per
    forward pass; ``max_items``: a fixed-seed sample of at most this many questions per set (None: all);
    ``mmlu``: an MMLU folder or hub id for the utility score (None: none); ``retain_ppl``: the held-out
    retain-corpus perplexity; ``add_bos``: prepend BOS to each context (LMH's ``add_bos_token``, off by
    default for causal LMs); ``lm_eval``: lm-evaluation-harness tasks also run on the model
    (:mod:`unlearnkit.metrics.harness`)."""

    subsets: list[str] = field(default_factory=lambda: ["bio", "cyber"])
    batch_size: int = 32
    max_items: int | None = None
    mmlu: str | None = None
    retain_ppl: bool = True
    add_bos: bool = False
    lm_eval: LmEvalConfig | None = None

    def check(self) -> None:
        bad = [s for s in self.subsets if s not in SUBSETS]
        if bad or not self.subsets:
            raise ConfigError(
                f"eval.subsets={self.subsets!r}: choose among {list(SUBSETS)} (e.g. [bio, cyber])"
            )
        if self.batch_size < 1:
            raise ConfigError(f"eval.batch_size must be at least 1, got {self.batch_size}")
        if self.max_items is not None and self.max_items < 1:
            raise ConfigError(f"eval.max_items must be at least 1 (or null for all), got {self.max_items}")


def sample_items(items: list[dict], max_items: int | None) -> list[dict]:
    """All items, or a fixed-seed sample of ``max_items`` of them in their original order."""
    if max_items is None or len(items) <= max_items:
        return items
    keep = np.sort(np.random.default_rng(0).choice(len(items), size=max_items, replace=False))
    return [items[i] for i in keep]


def corpus_perplexity(model: nn.Module, family: Any, examples: ExampleSet, batch_size: int) -> float:
    """exp(Σ token NLL / Σ tokens) over ``examples`` (the family's summed NLL and token counts)."""
    total, tokens = 0.0, 0
    device = model_device(model)
    with eval_mode(model):
        for batch in examples.loader(batch_size):
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            total += float(family.per_example_loss(model, batch).double().sum())
            tokens += int(family.num_units(batch).sum())
    return math.exp(total / max(tokens, 1))


def mmlu_source(cfg: WmdpEval, exp: Any) -> str | None:
    """``eval.mmlu``, else the control set a generated world ships (``data.meta["mmlu"]``), else None."""
    return cfg.mmlu if cfg.mmlu is not None else exp.data.meta.get("mmlu")


@register_protocol("wmdp")
class Wmdp(HarnessProtocol):
    Config = WmdpEval
    headline = ("wmdp_bio", "wmdp_cyber", "mmlu", "retain_ppl", "RTE")
    forget_keys = ("wmdp_bio", "wmdp_cyber", "wmdp_chem")
    caption = (
        "wmdp_bio / wmdp_cyber = zero-shot multiple-choice accuracy (%, lm-evaluation-harness scoring; lower "
        "is better after unlearning, chance 25); mmlu = MMLU accuracy (%); retain_ppl = perplexity of "
        "held-out retain-corpus documents (lower is better); RTE in seconds."
    )

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.mmlu_items: list[dict] | None = None

    def check_setup(self, exp: Any) -> None:
        """The asked subsets were loaded, the MMLU questions load and validate, and ``eval.lm_eval``'s tasks
        load, before any training."""
        super().check_setup(exp)
        loaded = exp.data.meta.get("eval") or {}
        missing = [s for s in self.cfg.subsets if s not in loaded]
        if missing:
            raise ConfigError(
                f"eval.subsets asks for {missing} but the data has only {sorted(loaded)}: add "
                f"wmdp-{missing[0]}.jsonl to the data folder or drop it from eval.subsets"
            )
        source = mmlu_source(self.cfg, exp)
        if source is not None and self.mmlu_items is None:
            self.mmlu_items = sample_items(load_mmlu(source), self.cfg.max_items)

    def accuracies(self, exp: Any, model: nn.Module) -> dict[str, Any]:
        """WMDP accuracy (and acc_norm, equal to it for the letter continuations) per subset, in percent."""
        tok, out = exp.data.meta["tokenizer"], {}
        for s in self.cfg.subsets:
            items = sample_items(exp.data.meta["eval"][s], self.cfg.max_items)
            r = mc_accuracy(model, tok, items, SUBSETS[s], self.cfg.batch_size, self.cfg.add_bos)
            out |= {f"wmdp_{s}": 100 * r["acc"], f"wmdp_{s}_acc_norm": 100 * r["acc_norm"]}
            out[f"wmdp_{s}_n"] = r["n"]
        return out

    def evaluate(
        self, exp: Any, model: nn.Module, oracle: dict[str, Any] | str | None = None, original: Any = None
    ) -> Result:
        out = self.accuracies(exp, model)
        if mmlu_source(self.cfg, exp) is not None:
            self.check_setup(exp)
            items = self.mmlu_items or []
            subjects = [it["subject"] for it in items]
            tok = exp.data.meta["tokenizer"]
            r = mc_accuracy(model, tok, items, subjects, self.cfg.batch_size, self.cfg.add_bos)
            out |= {"mmlu": 100 * r["acc"], "mmlu_n": r["n"]}
        if self.cfg.retain_ppl:
            out["retain_ppl"] = corpus_perplexity(model, exp.family, exp.split.test, self.cfg.batch_size)
        return Result.from_flat(out | self.harness_metrics(exp, model))

    def relearn(
        self, exp: Any, model: nn.Module, oracle: dict[str, Any] | None, spec: dict[str, Any]
    ) -> dict[str, Any]:
        relearned = relearn(model, exp.split.forget, exp.family, **spec)
        after = self.accuracies(exp, relearned)
        return {f"{k}_relearned": after[k] for k in self.forget_keys if k in after}
