"""UnlearnDiffAtk on a user's Stable Diffusion folder (tiny, random, built offline): latent targets, the
model's own CLIP tokenizer, a pluggable judge, and pre-ASR / ASR recomputed from the saved adversarial
prompts."""

from __future__ import annotations

import json

import pytest
import torch
from sd_tiny import build_sd_folder, build_splitting_classifier

from unlearnkit.cli import main
from unlearnkit.metrics.judges import ClassifierJudge
from unlearnkit.models.sd import load_sd
from unlearnkit.models.t2i import ddim_sample, encode_prompts, generate_for_prompts

torch.set_num_threads(1)
CAT = "a photo of a cat"
_BASE = ["unlearn", "--preset", "diffusion/esd", f"split.concept={CAT}"]
ATTACK = "{n_prompts: 6, k: 2, rounds: 2, check_every: 2, noise_batch: 2, candidates: 0, sample_steps: 2}"


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return build_sd_folder(tmp_path_factory.mktemp("sd") / "model")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARNKIT_CACHE", str(tmp_path / "cache"))


def _images(model, ids: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    x_T = torch.cat([torch.randn(1, *model.sample_shape, generator=g) for g in gens])
    return ((model.to_images(ddim_sample(model, ids, 3.0, 2, x_T=x_T)) + 1) / 2).clamp(0, 1)


def test_attack_on_sd_reports_the_asr_its_saved_prompts_give(sd, tmp_path):
    # a judge that splits this model's cat images about in half (a random head sees one class everywhere)
    imgs, _ = generate_for_prompts(load_sd(sd), [CAT], per_prompt=16, seed=123, steps=2)
    judge_dir = build_splitting_classifier(tmp_path / "judge", imgs)
    out, shots = tmp_path / "run", tmp_path / "shots"
    rc = main(
        [*_BASE, f"model.path={sd}", "--out", str(out)]
        + ["eval.per_prompt=1", "eval.steps=2", "method.epochs=1", "method.ddim_steps=2", "method.lr=0.05"]
        + ["eval.judge=classifier", f"eval.judge_model={judge_dir}", f"eval.judge_classes={{{CAT}: 1}}"]
        + [f"eval.attack={ATTACK}", f"eval.images_dir={shots}", "--json"]
    )
    assert rc == 0
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    records = json.loads((shots / "attack.json").read_text())["prompts"]
    assert len(records) == 6 and [r["seed"] for r in records] == list(range(6))
    # recompute every verdict from the written diffusers folder, the saved prompts and the judge
    model, judge = load_sd(out / "hf_model"), ClassifierJudge(judge_dir, {CAT: 1})
    pad = model.tokenizer.pad_token_id
    plain = _images(model, encode_prompts(model, [CAT] * 6), list(range(6)))
    pre = judge.recognises(plain, CAT).tolist()
    assert pre == [r["pre_success"] for r in records]
    attacked = [r for r in records if not r["pre_success"]]
    assert attacked and all(r["adversarial_prompt"].endswith(CAT) for r in attacked)
    cat = model.tokenizer(CAT)["input_ids"]  # [BOS, ..., EOS]
    for r in attacked:  # [BOS, 2 prefix tokens, the prompt's tokens, EOS, pad...]
        ids = torch.tensor([r["adversarial_ids"] + [pad] * (77 - len(r["adversarial_ids"]))])
        assert ids[0, 3 : 2 + len(cat)].tolist() == cat[1:]
        assert model.tokenizer.decode(ids[0].tolist(), skip_special_tokens=True) == r["adversarial_prompt"]
        assert bool(judge.recognises(_images(model, ids, [r["seed"]]), CAT)[0]) == r["success"]
    flags = [r["pre_success"] or r["success"] for r in records]
    assert metrics["pre_ASR"] == pytest.approx(100 * sum(pre) / 6)
    assert metrics["ASR"] == pytest.approx(100 * sum(flags) / 6)
    assert 0 < metrics["ASR"] < 100 and metrics["ASR"] > metrics["pre_ASR"]  # the attack flipped a prompt


def test_attack_without_a_judge_is_refused_before_training(sd, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main([*_BASE, f"model.path={sd}", "--out", str(out)] + [f"eval.attack={ATTACK}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "eval.attack needs a judge" in err[0] and not out.exists()
