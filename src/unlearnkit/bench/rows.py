"""How a suite computes a row, as one injectable object: :class:`RowRunner`.

Every suite kind builds its experiments, originals, oracles, unlearned models and metrics through the
runner it is handed (``run_suite(..., runner=...)``), so a test that counts, fails or forbids training
passes a subclass instead of patching module functions. :func:`receipt` is the one receipt builder."""

from __future__ import annotations

from typing import Any

from torch import nn

from unlearnkit.bench.loop import Lazy, resolved
from unlearnkit.engine.loop import FitResult
from unlearnkit.experiment import (
    Setup,
    build_method,
    evaluate_model,
    make_setup,
    oracle_model,
    original_model,
    resolve_oracle,
    run_method,
)
from unlearnkit.families.base import Original
from unlearnkit.io import weights_sha256
from unlearnkit.methods.base import Method
from unlearnkit.selection.runner import run_selection
from unlearnkit.selection.worstcase import SelectionResult, WorstCaseConfig
from unlearnkit.tuning import tune_setup

ORACLE = "retrain"  # the suite row that is the retrained oracle
REFERENCE = "original"  # the suite row that is the model before unlearning


class RowRunner:
    """The experiment-layer calls a suite makes. Override a hook to observe or replace it."""

    def make_setup(self, cfg: dict[str, Any]) -> Setup:
        return make_setup(cfg)

    def original_model(self, setup: Setup) -> Original:
        return original_model(setup)

    def oracle_model(self, setup: Setup, method: Method, original: nn.Module) -> tuple[nn.Module, float]:
        return oracle_model(setup, method, original)

    def run_method(
        self, setup: Setup, original: nn.Module, method: Method
    ) -> tuple[nn.Module, float, FitResult]:
        return run_method(setup, original, method)

    def evaluate(
        self,
        setup: Setup,
        model: nn.Module,
        oracle: dict[str, Any] | str | None = None,
        original: Original | None = None,
    ) -> dict[str, Any]:
        return evaluate_model(setup, model, oracle, original)

    def tune(self, setup: Setup, original: nn.Module, spec: dict[str, Any]) -> dict[str, Any]:
        """The options ``unlearnkit tune`` chooses for ``spec`` from ``original``, without the oracle
        (``bench --tune``; :func:`unlearnkit.tuning.tune_setup`)."""
        return tune_setup(setup, original, spec).best

    def select(
        self,
        setup: Setup,
        original: nn.Module,
        size: int | float | str,
        cfg: WorstCaseConfig,
        specs: dict[str, dict],
        granularity: str,
    ) -> SelectionResult:
        """A worst-case forget set (``selection.runner.run_selection``)."""
        return run_selection(setup, original, size, cfg, specs, granularity)

    def run_row(
        self,
        setup: Setup,
        original: Original,
        mname: str,
        spec: dict[str, Any],
        oracle: dict[str, Any] | None,
        attack: dict[str, Any] | None,
    ) -> tuple[dict[str, Any], nn.Module, list[dict[str, Any]] | None]:
        """Unlearn (or retrain, cached) from ``original``, evaluate against the oracle, optionally relearn.

        Returns (metrics, the model, its training log or None: the cached oracle and ``original`` have
        none). The oracle row is the config's oracle (``oracle:`` section; :func:`~unlearnkit.experiment.
        resolve_oracle`), compared with itself (gap 0, forget quality 1), as the papers' tables do; its model
        is None when it comes from a stats file."""
        history = None
        family = setup.family.name
        if mname == ORACLE:
            method = build_method(spec, family)
            found = resolve_oracle(setup, original, method, train=self.oracle_model, evaluate=self.evaluate)
            return found.flat, found.model, None
        if mname == REFERENCE:  # the model before unlearning, as a reference row
            model, seconds = original.model, 0.0
        else:
            model, seconds, fit = self.run_method(setup, original.model, build_method(spec, family))
            history = fit.history
        metrics = self.evaluate(setup, model, oracle, original) | {"RTE": seconds}
        if attack and attack.get("relearn") is not None:
            metrics |= setup.protocol.relearn(setup, model, oracle, dict(attack["relearn"] or {}))
        return metrics, model, history


def receipt(setup: Setup, before: str | None, after: str | None) -> dict[str, Any]:
    """A row's receipt: its protocol, the forget set's fingerprint and size, and the sha256 of the weights
    before and after unlearning (``before`` None for the oracle, trained from scratch)."""
    return {
        "protocol": setup.protocol.name,
        "forget_ids_sha256": setup.split.forget_ids_sha256(),
        "forget_count": len(setup.split.forget),
        "weights_before_sha256": before,
        "weights_after_sha256": after,
    }


def seed_inputs(
    loop: Any, runner: RowRunner, cfg: dict[str, Any], seed: int, ready: Setup | None = None
) -> tuple[dict[str, Any], Lazy[Setup], Lazy[tuple[Original, str]]]:
    """(resolved config, lazy setup, lazy (original, its weights sha256)) of one suite seed: nothing is
    built unless a row of this seed has to run (rows found in the store need neither). ``loop`` is the
    :class:`~unlearnkit.bench.loop.SuiteRunner` that shows what runs; ``ready``: this seed's setup, if
    the suite already built it (its up-front checks)."""
    scfg = resolved(cfg, seed)
    setup: Lazy[Setup] = Lazy(lambda: ready if ready is not None else runner.make_setup(scfg))

    def load_original() -> tuple[Original, str]:
        loop.say(f"seed {seed}: original model")
        original = runner.original_model(setup())
        return original, weights_sha256(original.model)

    return scfg, setup, Lazy(load_original)
