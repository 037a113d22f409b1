"""The text family on the models users bring: eight architectures, with and without chat templates.

Each model folder (tests/lm_zoo.py) holds a tiny random model and its own tokenizer; ``unlearnkit unlearn``
runs on a TOFU-schema folder with no tokenizer of its own, so the model folder's tokenizer must be the one
used. Every run is checked against a direct computation: the forget-set probability TOFU reports equals
exp(−mean answer NLL) from Hugging Face's own loss on prompts built here straight from the tokenizer
(``apply_chat_template`` text, or ``"Question: ...\\nAnswer:"``), and the forget probability fell.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from lm_zoo import ARCHITECTURES, MLP_OUT, build_tokenizer, save_model, tofu_folder_and_texts

from unlearnkit.cli import main

METHODS = ("ga", "graddiff", "npo", "simnpo", "idkpo")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    folder, texts = tofu_folder_and_texts(root / "tofu")
    models = {}
    for arch, template in ARCHITECTURES.items():
        models[arch] = save_model(root / arch, arch, build_tokenizer(texts, template))
    return root, folder, models


def _forget_records(folder: Path) -> list[dict]:
    return [
        json.loads(line) for line in (folder / "forget10_perturbed.json").read_text().splitlines() if line
    ]


def direct_forget_prob(model_dir: Path, records: list[dict]) -> float:
    """Mean over items of exp(−token-mean answer NLL), prompts built straight from the tokenizer and the
    NLL from ``model(..., labels=...).loss`` (Hugging Face's shifted cross-entropy)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    probs = []
    for r in records:
        q, a = r["question"].strip(), r["answer"].strip()
        if tok.chat_template:
            user = [{"role": "user", "content": q}]
            prompt_text = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
            full_text = tok.apply_chat_template(user + [{"role": "assistant", "content": a}], tokenize=False)
            prompt = tok(prompt_text, add_special_tokens=False)["input_ids"]
            full = tok(full_text, add_special_tokens=False)["input_ids"]
            assert full[: len(prompt)] == prompt
            full = full + ([tok.eos_token_id] if full[-1] != tok.eos_token_id else [])
        else:
            prompt = [tok.bos_token_id] + tok(f"Question: {q}\nAnswer:", add_special_tokens=False)[
                "input_ids"
            ]
            full = prompt + tok(" " + a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([full])
        labels = ids.clone()
        labels[0, : len(prompt)] = -100
        with torch.no_grad():
            probs.append(math.exp(-float(model(input_ids=ids, labels=labels).loss)))
    return sum(probs) / len(probs)


def _unlearn(zoo, arch: str, out: Path, *extra: str) -> dict:
    _, folder, models = zoo
    args = ["unlearn", "--preset", "text/tofu", f"data.source={folder}", f"model.path={models[arch]}"]
    args += ["method.epochs=2", "eval.max_new_tokens=4", *extra, "--out", str(out)]
    assert main(args) == 0
    return json.loads((out / "results.json").read_text())["metrics"]


def _changed(before: Path, after: Path) -> set[str]:
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(before).state_dict()
    b = AutoModelForCausalLM.from_pretrained(after).state_dict()
    assert set(a) == set(b)
    return {k for k in a if not torch.equal(a[k], b[k])}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_methods_run_on_every_architecture(zoo, tmp_path, arch, method):
    _, folder, models = zoo
    out = tmp_path / "run"
    # SimNPO at its TOFU settings does next to nothing to a random model: its weight σ(−β·NLL/|y|) is
    # e^−27 at β = 4.5 and a per-token NLL of 6 (log of the vocabulary), and its retain term (weight 1 vs
    # 0.125) teaches the shared answer format. A small β and no retain term make the forget term visible.
    extra = ["method.alpha=0", "method.beta=0.1"] if method == "simnpo" else []
    metrics = _unlearn(zoo, arch, out, f"method.name={method}", "method.lr=1e-2", *extra)
    for key in ("forget_prob", "forget_rouge", "forget_truth_ratio", "model_utility", "retain_prob"):
        assert math.isfinite(metrics[key]), key
    records = _forget_records(folder)
    after = direct_forget_prob(out / "hf_model", records)
    assert metrics["forget_prob"] == pytest.approx(after, rel=1e-4)
    assert after < direct_forget_prob(models[arch], records)  # the forget answers became less likely


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_rmu_trains_the_mlp_output_projection_of_every_architecture(zoo, tmp_path, arch, lora):
    """RMU's default trained weights are found from the model (layer 0 of 2: ℓ−2..ℓ = {0}); under LoRA
    (adapters on every linear layer) the merged model differs from the original in that weight only."""
    _, _, models = zoo
    extra = ["method.name=rmu", "method.lr=1e-2"] + (["model.lora={r: 2, alpha: 4}"] if lora else [])
    metrics = _unlearn(zoo, arch, tmp_path / "run", *extra)
    assert math.isfinite(metrics["forget_prob"])
    changed = _changed(models[arch], tmp_path / "run" / "hf_model")
    pattern = re.compile(rf"\.0\.{re.escape(MLP_OUT[arch])}\.weight$")
    assert len(changed) == 1 and pattern.search(changed.pop())


def test_rmu_errors_name_the_projection_that_could_match(zoo, tmp_path, capsys):
    """GPT-NeoX's projection is dense_4h_to_h: a regex that misses it, and LoRA adapters that leave it out,
    are one-line errors that name it."""
    _, folder, models = zoo
    base = ["unlearn", "--preset", "text/tofu", f"data.source={folder}", f"model.path={models['gpt_neox']}"]
    base += ["method.name=rmu", "--out", str(tmp_path / "o")]
    want = "gpt_neox.layers.0.mlp.dense_4h_to_h.weight"
    assert main([*base, "method.trainable=down_proj"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "matches no parameter" in err and want in err and "gpt_neox.layers.N.attention.dense.weight" in err
    assert main([*base, "model.lora={r: 2, target_modules: [query_key_value]}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "model.lora.target_modules" in err and want in err
