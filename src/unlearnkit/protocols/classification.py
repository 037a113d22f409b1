"""SalUn's classification protocol (Fan et al., ICLR 2024, §5): UA, RA, TA, MIA-Efficacy and Avg. Gap."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from unlearnkit.errors import ConfigError
from unlearnkit.metrics.mia import FEATURES
from unlearnkit.metrics.vision import avg_gap, evaluate_classifier
from unlearnkit.protocols.base import EvalConfig, Protocol, Result
from unlearnkit.registry import register_protocol


@dataclass
class ClassificationEval(EvalConfig):
    """``mia_features``: the MIA's input features; the first is ``MIA``, the others ``MIA_<feature>``."""

    mia_features: list[str] = field(default_factory=lambda: ["confidence"])

    def check(self) -> None:
        for f in self.mia_features:
            if f not in FEATURES:
                raise ConfigError(f"eval.mia_features: unknown feature {f!r}; choose from {sorted(FEATURES)}")


@register_protocol("classification")
class Classification(Protocol):
    Config = ClassificationEval
    headline = ("UA", "RA", "TA", "MIA", "RTE", "gap")
    axes = ("UA", "TA")
    gap_key = "gap"
    caption = (
        "UA, RA, TA, MIA in %, RTE in seconds, gap = Avg. Gap to retrain over UA/RA/TA/MIA (lower is better)."
    )

    def evaluate(
        self, exp: Any, model: nn.Module, oracle: dict[str, Any] | str | None = None, original: Any = None
    ) -> Result:
        feats = self.cfg.mia_features or ["confidence"]
        bs = exp.engine_cfg.eval_batch_size
        out = evaluate_classifier(model, exp.split, exp.family, feats, bs)
        if oracle is not None:
            out["gap"] = avg_gap(out, out if oracle == "self" else oracle)
        return Result(out)
