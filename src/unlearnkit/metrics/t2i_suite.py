"""Suite-level evaluation of the diffusion family: UA on the erased concept, utility and Fréchet distance
on the other captions (judge-based), and, when ``eval.attack`` is set, pre-ASR and ASR under the
adversarial prompt attack (UnlearnDiffAtk)."""

from __future__ import annotations

from typing import Any

from torch import nn

from unlearnkit.errors import UnlearnkitError


def evaluate_t2i(setup: Any, model: nn.Module) -> dict[str, Any]:
    from unlearnkit.metrics.diffusion import erasure_metrics

    judge = setup.info.get("judge")
    if judge is None:
        raise UnlearnkitError("the diffusion evaluation needs the judge: load the original model first")
    ev = setup.cfg.get("eval", {})
    concept = setup.cfg["split"]["concept"]
    retain = [c for c in setup.data.class_names if c != concept]
    real = setup.split.test.all()["x"]
    out = erasure_metrics(
        model,
        judge,
        concept,
        retain,
        real,
        per_prompt=int(ev.get("per_prompt", 16)),
        seed=int(ev.get("sample_seed", 0)),
        guidance=float(ev.get("guidance", 3.0)),
        steps=int(ev.get("steps", 25)),
    )
    attack = ev.get("attack")
    if attack:
        from unlearnkit.attacks.prompt import evaluate_asr

        out |= evaluate_asr(
            model, setup.info["original"], judge, [concept], setup.data.meta["tokenizer"], **dict(attack)
        )
    return out
