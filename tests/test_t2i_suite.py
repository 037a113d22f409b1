"""The t2i-shapes suite contract on the shipped tiny text-to-image model, with a tiny budget (< 60 s):
every row carries UA / pre_ASR / ASR / utility / fid / kid, the "original" row is the un-unlearned model
itself (its UA equals a direct evaluation of ``load_original()``), and ASR is UnlearnDiffAtk's cumulative
count."""

from __future__ import annotations

import json

import pytest
import torch

from unlearnkit.bench.suite import load_suite, run_suite

torch.set_num_threads(1)

N_PROMPTS = 2
FAST = [
    "eval.per_prompt=2",
    "eval.steps=5",
    f"eval.attack={{n_prompts: {N_PROMPTS}, k: 2, rounds: 1, check_every: 2, noise_batch: 2, candidates: 1, "
    "sample_steps: 5}",
    "methods.esd={name: esd, variant: x, epochs: 1}",
]


def test_suite_preset_lists_the_issue_methods_and_attack():
    cfg = load_suite("t2i-shapes")
    assert list(cfg["methods"]) == ["original", "esd", "salun", "uce", "fmn", "advunlearn", "advunlearn_fast"]
    assert cfg["methods"]["original"] == {"name": "original"}
    assert cfg["methods"]["advunlearn_fast"]["name"] == "advunlearn_fast"
    assert cfg["methods"]["salun"]["name"] == "salun"
    assert cfg["keys"] == ["UA", "pre_ASR", "ASR", "utility", "fid", "kid", "RTE"]
    assert cfg["family"] == "diffusion" and cfg["split"]["concept"] == "a red circle"
    assert cfg["eval"]["attack"]["k"] == 5 and cfg["eval"]["attack"]["n_prompts"] >= 8


def test_suite_rows_and_original_reference(tmp_path):
    from unlearnkit.data.shapes import all_captions, load_shapes
    from unlearnkit.metrics.diffusion import erasure_metrics
    from unlearnkit.models.t2i_world import load_original

    res = run_suite("t2i-shapes", 1, tmp_path, methods=["original", "esd"], overrides=FAST, progress=False)
    rows = {r["method"]: r["metrics"] for r in res["rows"]}
    assert set(rows) == {"original", "esd"}
    for m in rows.values():
        for key in ("UA", "pre_ASR", "ASR", "utility", "fid", "kid", "RTE"):
            assert key in m and m[key] == m[key], key
        assert 0 <= m["pre_ASR"] <= m["ASR"] <= 100
        assert (m["ASR"] * N_PROMPTS / 100) == pytest.approx(round(m["ASR"] * N_PROMPTS / 100))
    assert rows["original"]["RTE"] == 0.0 and rows["esd"]["RTE"] > 0
    orig, judge = load_original()
    concept = "a red circle"
    direct = erasure_metrics(
        orig, judge, concept, [c for c in all_captions() if c != concept], load_shapes().test.all()["x"],
        per_prompt=2, seed=0, guidance=3.0, steps=5,
    )  # fmt: skip
    assert rows["original"]["UA"] == pytest.approx(direct["UA"])
    assert rows["original"]["utility"] == pytest.approx(direct["utility"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["keys"] == ["UA", "pre_ASR", "ASR", "utility", "fid", "kid", "RTE"]
    assert "| original |" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("attack_seed", [None, 77])
def test_each_suite_seed_draws_its_own_evaluation_noise(monkeypatch, attack_seed):
    """Suite seed s samples from 1000·s + eval.sample_seed and attacks under 1000·s (or eval.attack.seed)."""
    from types import SimpleNamespace

    import unlearnkit.protocols.erasure as erasure_mod
    from unlearnkit.families.base import Original

    seen: dict[str, int] = {}
    monkeypatch.setattr(erasure_mod, "erasure_metrics", lambda *a, **kw: seen.update(sample=kw["seed"]) or {})
    monkeypatch.setattr(erasure_mod, "evaluate_asr", lambda *a, **kw: seen.update(attack=kw["seed"]) or {})
    attack = {"n_prompts": 1} | ({} if attack_seed is None else {"seed": attack_seed})
    setup = SimpleNamespace(
        seed=3,
        cfg={"eval": {"sample_seed": 5, "attack": attack}, "split": {"concept": "a red circle"}},
        data=SimpleNamespace(class_names=["a red circle", "a blue square"], meta={"tokenizer": None}),
        split=SimpleNamespace(test=SimpleNamespace(all=lambda: {"x": torch.zeros(1)})),
    )
    protocol = erasure_mod.Erasure.from_section(setup.cfg["eval"])
    protocol.evaluate(setup, torch.nn.Linear(1, 1), original=Original(torch.nn.Identity(), {}, {"judge": 1}))
    assert seen == {"sample": 3005, "attack": 3000 if attack_seed is None else attack_seed}
