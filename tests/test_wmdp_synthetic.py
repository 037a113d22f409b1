"""The generated WMDP-like world (data/synthetic_wmdp.py): its folder loads through the real WMDP and MMLU
loaders, every question's right option is the fact its corpus states (and no distractor is), the protocol
scores the world's control set as MMLU, and the wmdp-synthetic suite resolves to valid methods and keys."""

from __future__ import annotations

import json
import re

import pytest

from unlearnkit.bench.suite import load_suite
from unlearnkit.config import apply_overrides, load_preset
from unlearnkit.data.mmlu import load_mmlu
from unlearnkit.data.synthetic_wmdp import CONTROL_SUBJECT, LETTERS, TOPICS, generate_wmdp, write_wmdp_folder
from unlearnkit.data.wmdp import load_wmdp
from unlearnkit.experiment import make_setup
from unlearnkit.experiment.run import build_method
from unlearnkit.metrics.multiple_choice import mc_accuracy, mc_prompt
from unlearnkit.registry import get_protocol

N = 6  # entities per topic: 30 questions and 30 control questions


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_wmdp_folder(tmp_path_factory.mktemp("wsyn") / "w", n_entities=N, n_practice=1, seed=3)


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_folder_loads_through_the_wmdp_and_mmlu_loaders(folder):
    data = load_wmdp(str(folder), forget_corpora=["bio-forget-corpus"], retain_corpora=["bio-retain-corpus"])
    assert sorted(data.meta["eval"]) == ["bio"] and len(data.meta["eval"]["bio"]) == 5 * N
    # per entity: 2 prose documents, 1 practice quiz and 1 exam copy per fact
    assert len(data.meta["forget_ids"]["forget"]) == N * (2 + 5 + 5)
    control = load_mmlu(str(folder / "mmlu"))
    assert len(control) == 5 * N and {q["subject"] for q in control} == {CONTROL_SUBJECT}
    assert (
        generate_wmdp(N, n_practice=1, seed=3)["wmdp-bio"][0]["question"]
        == data.meta["eval"]["bio"][0]["question"]
    )  # deterministic from the seed


@pytest.mark.parametrize("stem, corpus, topic", [("wmdp-bio", "bio-forget-corpus", "pathogen"),
                                                 ("mmlu/all", "bio-retain-corpus", "island")])  # fmt: skip
def test_answers_are_the_facts_the_corpus_states(folder, stem, corpus, topic):
    docs = _rows(folder / f"{corpus}.jsonl")
    prose = [d["text"] for d in docs if d["kind"] == "prose"]
    other = "island of" if topic == "pathogen" else " virus"
    assert not any(other in d["text"] for d in docs)  # one topic per corpus
    for q in _rows(folder / f"{stem}.jsonl"):
        about = [t for t in prose if q["entity"] in t or q["entity"][:1].upper() + q["entity"][1:] in t]
        assert len(about) == 2
        for i, choice in enumerate(q["choices"]):
            stated = [bool(re.search(rf"\b{re.escape(choice)}\b", t, re.IGNORECASE)) for t in about]
            assert all(stated) if i == q["answer"] else not any(stated), (q["question"], choice)
        assert len(set(q["choices"])) == 4
    quizzes = [d["text"] for d in docs if d["kind"] != "prose"]
    q = _rows(folder / f"{stem}.jsonl")[0]
    subject = "biology" if topic == "pathogen" else CONTROL_SUBJECT
    # the exam copy in the corpus is exactly the prompt lm-evaluation-harness scores, plus the right letter
    assert mc_prompt(q["question"], q["choices"], subject) + " " + LETTERS[q["answer"]] in quizzes


def test_protocol_scores_the_worlds_control_set_as_mmlu(tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARNKIT_CACHE", str(tmp_path))
    cfg = apply_overrides(load_preset("text/wmdp-synthetic"), ["data.n_entities=4"])
    setup = make_setup(cfg)
    model = setup.new_model()
    res = setup.protocol.evaluate(setup, model).public
    control = load_mmlu(setup.data.meta["mmlu"])
    direct = mc_accuracy(model, setup.data.meta["tokenizer"], control, CONTROL_SUBJECT, 64)
    assert res["mmlu_n"] == 20 and res["mmlu"] == pytest.approx(100 * direct["acc"])
    assert res["wmdp_bio_n"] == 20 and res["retain_ppl"] > 1.0


def test_suite_resolves_to_every_raw_text_method_and_real_keys():
    cfg = load_suite("wmdp-synthetic")
    lm = {"ga", "graddiff", "npo", "simnpo", "rmu", "undial", "ceu", "satimp", "wga", "pdu"}
    assert set(cfg["methods"]) == lm | {"retrain"}  # idkpo/idknll need answers to replace
    for spec in cfg["methods"].values():
        build_method(spec, "text")  # a bad name or option raises
    proto = get_protocol("wmdp")
    known = set(proto.headline) | {f"{k}_relearned" for k in proto.forget_keys}
    assert set(cfg["keys"]) <= known and cfg["data"]["name"] == "wmdp-synthetic"
    assert all(k in TOPICS for k in ("pathogen", "island"))
