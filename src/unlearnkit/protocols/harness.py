"""``eval.lm_eval`` for the language-model protocols: lm-evaluation-harness tasks run on the evaluated model
(:mod:`unlearnkit.metrics.harness`), their scores added to the protocol's metrics and the whole lm-eval
result offered as the run's ``lm_eval.json``. Validated (task names, include path, metric names, the
tasks' data loading) in :meth:`check_setup`, before any training."""

from __future__ import annotations

from typing import Any

from torch import nn

from unlearnkit.metrics.harness import Harness
from unlearnkit.protocols.base import Protocol

DOCUMENT = "lm_eval.json"


class HarnessProtocol(Protocol):
    """A protocol whose ``Config`` has an ``lm_eval: LmEvalConfig | None`` field."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        section = getattr(self.cfg, "lm_eval", None)
        self.harness = Harness(section) if section is not None else None

    def check_setup(self, exp: Any) -> None:
        if self.harness is not None:
            self.harness.prepare()

    def harness_metrics(self, exp: Any, model: nn.Module) -> dict[str, float]:
        """The ``lm_eval/<task>/<metric>`` values of ``model`` ({} without ``eval.lm_eval``)."""
        if self.harness is None:
            return {}
        return self.harness.evaluate(model, exp.data.meta["tokenizer"])

    def documents(self) -> dict[str, Any]:
        doc = self.harness.document() if self.harness is not None else None
        return {DOCUMENT: doc} if doc is not None else {}
