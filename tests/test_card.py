"""Model cards next to unlearned models: Hugging Face metadata that ``huggingface_hub`` parses, the sections,
and the single run indexed in the run store by ``write_run``."""

from __future__ import annotations

import json

import torch
from huggingface_hub import ModelCard
from torch import nn

import unlearnkit
from unlearnkit.cli import main
from unlearnkit.runs.card import model_card, write_card
from unlearnkit.runs.store import open_store

SECTIONS = (
    "## Base model",
    "## Method and hyperparameters",
    "## Forget-set receipt",
    "## Metrics vs the oracle",
    "## How to load",
    "## Limitations",
)
RECEIPT = {
    "method": "npo",
    "forget_ids_sha256": "f" * 64,
    "forget_count": 40,
    "weights_before_sha256": "b" * 64,
    "weights_after_sha256": "a" * 64,
    "unlearnkit_version": "0.1.0",
}


def test_card_metadata_parses_with_huggingface_hub(tmp_path):
    config = {
        "family": "text",
        "seed": 3,
        "data": {"name": "tofu", "source": "locuslab/TOFU", "forget": "forget10"},
        "model": {"name": "hf", "path": "some-org/tiny-model"},
        "method": {"name": "npo", "lr": 1e-5, "beta": 0.1, "epochs": 5},
    }
    metrics = {"forget_quality": 0.5, "model_utility": 0.6, "_forget_tr": [0.1, 0.2]}
    oracle = {"forget_quality": 1.0, "model_utility": 0.62}
    text = model_card(config, RECEIPT, metrics, oracle, has_hf_model=True)
    data = ModelCard(text).data.to_dict()
    assert data["library_name"] == "unlearnkit"
    assert data["tags"] == ["machine-unlearning", "npo", "text"]
    assert data["base_model"] == "some-org/tiny-model" and data["datasets"] == ["locuslab/TOFU"]
    for section in SECTIONS:
        assert section in text
    assert "beta: 0.1" in text and "lr: 1.0e-05" in text  # the method spec, as YAML
    for h in ("f" * 64, "b" * 64, "a" * 64):
        assert h in text
    assert "| forget count | `40` |" in text
    assert "| forget_quality | 0.5 | 1 | -0.5 |" in text and "| model_utility | 0.6 | 0.62 | -0.02 |" in text
    assert "_forget_tr" not in text  # per-item entries stay out
    assert 'AutoModelForCausalLM.from_pretrained("hf_model")' in text and "model.safetensors" in text
    # write_card also puts the card in hf_model/ so that folder can be pushed as it is
    (tmp_path / "hf_model").mkdir()
    write_card(tmp_path, config, RECEIPT, metrics, oracle)
    assert (tmp_path / "README.md").read_text() == (tmp_path / "hf_model" / "README.md").read_text() == text


def test_local_models_get_no_hub_metadata(tmp_path):
    config = {"family": "vision", "model": {"name": "mlp", "hidden": 8, "path": str(tmp_path)}, "method": {}}
    data = ModelCard(model_card(config, RECEIPT, {"UA": 3.0})).data.to_dict()
    assert "base_model" not in data and "datasets" not in data
    assert data["tags"] == ["machine-unlearning", "npo", "vision"]  # the method name from the receipt


def test_unlearn_cli_writes_card_and_indexes_the_run(tmp_path):
    runs = tmp_path / "runs"
    args = [
        "unlearn",
        "--preset",
        "vision/ft",
        "--json",
        "train.epochs=2",
        "method.epochs=1",
        "eval.oracle=true",
    ]
    assert main([*args, "--out", str(runs / "a")]) == 0
    text = (runs / "a" / "README.md").read_text()
    data = ModelCard(text).data.to_dict()
    assert data["library_name"] == "unlearnkit" and data["tags"] == ["machine-unlearning", "ft", "vision"]
    assert "base_model" not in data  # trained by unlearnkit, not a Hub model
    results = json.loads((runs / "a" / "results.json").read_text())
    receipt = json.loads((runs / "a" / "receipt.json").read_text())
    ua, oracle_ua = results["metrics"]["UA"], results["oracle"]["UA"]
    assert f"| UA | {ua:.4g} | {oracle_ua:.4g} | {ua - oracle_ua:+.4g} |" in text
    assert receipt["forget_ids_sha256"] in text and receipt["weights_after_sha256"] in text
    assert "A `mlp` (hidden=128, depth=2) trained by unlearnkit on `digits`" in text
    with open_store(runs / "runs.sqlite") as st:
        (rec,) = st.query()
    assert rec.kind == "unlearn" and rec.method == "ft" and rec.family == "vision" and rec.seed == 0
    assert (
        rec.metrics == results["metrics"]
        and rec.receipt == receipt
        and rec.path == str((runs / "a").resolve())
    )
    assert rec.fields["oracle"] == results["oracle"]
    # a rerun into the same folder (--overwrite) replaces its row; another folder adds one
    assert main([*args, "--out", str(runs / "a"), "--overwrite"]) == 0
    assert main([*args, "--out", str(runs / "b"), "seed=1"]) == 0
    with open_store(runs) as st:
        assert [(r.id, r.seed) for r in st.query(kind="unlearn")] == [(rec.id, 0), (rec.id + 1, 1)]


def test_api_unlearn_writes_a_card_for_a_user_module(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
    x = torch.randn(40, 2)
    y = (x[:, 0] > 0).long()
    res = unlearnkit.unlearn(
        model, "ga", forget=(x[:8], y[:8]), retain=(x[8:], y[8:]), test=(x, y), epochs=1, out=tmp_path / "run"
    )
    text = (tmp_path / "run" / "README.md").read_text()
    assert ModelCard(text).data.to_dict()["tags"] == ["machine-unlearning", "ga", "vision"]
    assert "through the Python API" in text and "Build the same `torch.nn.Module`" in text
    assert res.receipt["weights_after_sha256"] in text
    with open_store(tmp_path) as st:
        assert [r.method for r in st.query(kind="unlearn")] == ["ga"]
