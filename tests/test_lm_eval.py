"""``eval.lm_eval``: lm-evaluation-harness tasks on the unlearned model, offline.

Task YAML files written here read a local JSON-lines file (``dataset_path: json``), so nothing downloads.
lm-eval's scores are checked against a direct computation with ``model(...).logits``: the multiple-choice
accuracy (argmax of the options' summed log-likelihoods; ``acc_norm`` divides by the option's length in
characters) and the perplexity exp(−mean log p(target | context)) of a loglikelihood task; WMDP's own
scorer (:mod:`unlearnkit.metrics.multiple_choice`, through the WMDP protocol) is checked against the
harness's own ``wmdp`` template.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lm_zoo import build_tokenizer, save_model, tofu_folder_and_texts
from wmdp_fixture import questions, write_wmdp_folder

from unlearnkit.cli import main
from unlearnkit.errors import ConfigError
from unlearnkit.metrics.harness import Harness, LmEvalConfig, flatten
from unlearnkit.protocols import protocol_for

pytest.importorskip("lm_eval")

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "silver", "black"]


def mc_docs() -> list[dict]:
    """Eight 4-option questions; options of different lengths, so ``acc_norm`` can differ from ``acc``."""
    return [
        {
            "question": f"Which colour is the house of author {i}?",
            "choices": [COLOURS[(i + k) % 8] * (1 + (i + k) % 3) for k in range(4)],
            "answer": (3 * i) % 4,
        }
        for i in range(8)
    ]


def ll_docs() -> list[dict]:
    return [
        {"context": f"The author number {i} was born in", "target": f" {COLOURS[i]} city"} for i in range(6)
    ]


TINYMC = """task: tinymc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
"""
TINYLL = """task: tinyll
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{target}}}}"
metric_list:
  - metric: perplexity
  - metric: acc
"""
# lm-eval's own WMDP template (its tasks/wmdp/_default_template_yaml), on a local file
TINYWMDP = """task: tinywmdp
include: {template}
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: {data}
description: "The following are multiple choice questions (with answers) about biology.\\n\\n"
"""


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import lm_eval

    root = tmp_path_factory.mktemp("lmeval")
    folder, texts = tofu_folder_and_texts(root / "tofu")
    model = save_model(root / "llama", "llama", build_tokenizer(texts, None))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "tinymc.yaml").write_text(TINYMC.format(data=_jsonl(root / "mc.jsonl", mc_docs())))
    (tasks / "tinyll.yaml").write_text(TINYLL.format(data=_jsonl(root / "ll.jsonl", ll_docs())))
    template = Path(lm_eval.__file__).parent / "tasks" / "wmdp" / "_default_template_yaml"
    wmdp = _jsonl(root / "wmdp.jsonl", questions("virus"))
    (tasks / "tinywmdp.yaml").write_text(TINYWMDP.format(template=template, data=wmdp))
    return folder, model, tasks


def _load(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir).eval()


def loglikelihood(model, tok, context: str, continuation: str) -> float:
    """Σ log p(continuation tokens | context): the tokens of context + continuation after the context's own
    (the tokenizer's default special tokens on both), from ``model(...).logits``."""
    ctx = tok(context)["input_ids"]
    whole = tok(context + continuation)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
    return sum(float(logp[t - 1, whole[t]]) for t in range(len(ctx), len(whole)))


def direct_mc(model, tok, docs: list[dict]) -> tuple[float, float]:
    """(acc, acc_norm): argmax of the options' log-likelihoods (" " + option after the prompt), and of
    the log-likelihoods divided by the options' lengths in characters."""
    hits, hits_norm = [], []
    for d in docs:
        ll = np.array(
            [loglikelihood(model, tok, f"Question: {d['question']}\nAnswer:", " " + c) for c in d["choices"]]
        )
        hits.append(int(ll.argmax()) == d["answer"])
        hits_norm.append(int((ll / np.array([len(c) for c in d["choices"]])).argmax()) == d["answer"])
    return float(np.mean(hits)), float(np.mean(hits_norm))


def direct_perplexity(model, tok, docs: list[dict]) -> float:
    """exp(−mean log p(target | context)); a ``loglikelihood`` task adds no delimiter between the two."""
    return math.exp(-np.mean([loglikelihood(model, tok, d["context"], d["target"]) for d in docs]))


def test_harness_scores_equal_direct_loglikelihoods(world, capsys):
    _, model_dir, tasks = world
    tok, model = _load(model_dir)
    harness = Harness(LmEvalConfig(tasks=["tinymc", "tinyll"], include_path=str(tasks), batch_size=3))
    model.train()
    torch.manual_seed(5)
    random.seed(5)
    rng_before, py_before = torch.get_rng_state(), random.getstate()
    got = harness.evaluate(model, tok)
    assert capsys.readouterr().out == ""  # lm-eval's notes went to stderr
    assert model.training  # the mode is restored, and so are the generators lm-eval seeds
    assert torch.equal(torch.get_rng_state(), rng_before) and random.getstate() == py_before
    model.eval()
    acc, acc_norm = direct_mc(model, tok, mc_docs())
    assert got["lm_eval/tinymc/acc"] == pytest.approx(acc)
    assert got["lm_eval/tinymc/acc_norm"] == pytest.approx(acc_norm)
    assert got["lm_eval/tinymc/n"] == 8
    assert got["lm_eval/tinyll/perplexity"] == pytest.approx(
        direct_perplexity(model, tok, ll_docs()), rel=1e-5
    )
    assert not any("stderr" in k for k in got)
    doc = harness.document()
    assert doc["results"]["tinymc"]["acc,none"] == got["lm_eval/tinymc/acc"]
    json.dumps(doc)  # plain JSON (lm-eval's dtypes and devices written as names)
    # limit: the first documents only; metrics: only the names asked for
    few = Harness(LmEvalConfig(tasks=["tinymc"], include_path=str(tasks), limit=3, metrics=["acc"]))
    got = few.evaluate(model, tok)
    assert set(got) == {"lm_eval/tinymc/acc", "lm_eval/tinymc/n"}
    assert got["lm_eval/tinymc/n"] == 3
    assert got["lm_eval/tinymc/acc"] == pytest.approx(direct_mc(model, tok, mc_docs()[:3])[0])


def test_no_git_noise_outside_a_repository(world, tmp_path, monkeypatch, capfd):
    """lm-eval records the working directory's git commit; outside a repository its ``git describe``
    printed git's "fatal: not a git repository" on stderr. Inside one, the commit is still recorded."""
    _, model_dir, tasks = world
    tok, model = _load(model_dir)
    harness = Harness(LmEvalConfig(tasks=["tinymc"], include_path=str(tasks), limit=2))
    monkeypatch.chdir(tmp_path)
    harness.evaluate(model, tok)
    assert "not a git repository" not in capfd.readouterr().err
    assert harness.document()["git_hash"] is None
    import lm_eval.evaluator

    assert lm_eval.evaluator.get_git_commit_hash.__module__ == "lm_eval.loggers.utils"  # restored
    subprocess.run(["git", "init", "-q"], check=True)
    who = ["-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", *who, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    harness.evaluate(model, tok)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    assert harness.document()["git_hash"] == head.strip()


def test_wmdp_protocol_runs_the_harness_and_agrees_with_its_wmdp_template(world, tmp_path):
    """In the WMDP protocol, eval.lm_eval adds the harness's scores; on lm-eval's own wmdp template over the
    same questions its accuracy equals unlearnkit's WMDP scorer (metrics/multiple_choice.py)."""
    from unlearnkit.experiment.setup import make_setup

    _, model_dir, tasks = world
    cfg = {
        "family": "text",
        "data": {"name": "wmdp", "source": str(write_wmdp_folder(tmp_path / "wmdp"))},
        "split": {"kind": "benchmark"},
        "model": {"name": "hf", "path": str(model_dir)},
        "eval": {
            "subsets": ["bio"],
            "retain_ppl": False,
            "lm_eval": {"tasks": ["tinywmdp"], "include_path": str(tasks)},
        },
    }
    setup = make_setup(cfg)
    _, model = _load(model_dir)
    got = setup.protocol.evaluate(setup, model).public
    assert got["lm_eval/tinywmdp/n"] == got["wmdp_bio_n"] == 8
    assert 100 * got["lm_eval/tinywmdp/acc"] == pytest.approx(got["wmdp_bio"])
    doc = setup.protocol.documents()["lm_eval.json"]
    assert doc["results"]["tinywmdp"]["acc,none"] == got["lm_eval/tinywmdp/acc"]


def test_flatten_names_filters_and_skips_stderr():
    res = {
        "results": {
            "gsm": {"alias": "gsm", "exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.1},
            "mmlu": {"acc,none": 0.5, "acc_stderr,none": "N/A", "sample_len": 9},
        },
        "n-samples": {"gsm": {"original": 10, "effective": 4}},
    }
    assert flatten(res) == {
        "lm_eval/gsm/exact_match,strict-match": 0.25,
        "lm_eval/mmlu/acc": 0.5,
        "lm_eval/gsm/n": 4,
    }
    assert flatten(res, ["exact_match"]) == {"lm_eval/gsm/exact_match,strict-match": 0.25, "lm_eval/gsm/n": 4}


def test_unlearn_stores_the_harness_results_with_the_run(world, tmp_path):
    folder, model_dir, tasks = world
    out = tmp_path / "run"
    args = ["unlearn", "--preset", "text/tofu", f"data.source={folder}", f"model.path={model_dir}"]
    args += ["method.name=ga", "method.lr=1e-2", "method.epochs=2", "eval.max_new_tokens=4"]
    args += ["eval.lm_eval.tasks=[tinymc, tinyll]", f"eval.lm_eval.include_path={tasks}", "--out", str(out)]
    assert main(args) == 0
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    doc = json.loads((out / "lm_eval.json").read_text())
    assert doc["results"]["tinyll"]["perplexity,none"] == metrics["lm_eval/tinyll/perplexity"]
    # the unlearned model was scored, not the original
    tok, after = _load(out / "hf_model")
    _, before = _load(model_dir)
    ppl = direct_perplexity(after, tok, ll_docs())
    assert metrics["lm_eval/tinyll/perplexity"] == pytest.approx(ppl, rel=1e-5)
    assert abs(direct_perplexity(before, tok, ll_docs()) - ppl) > 1e-3 * ppl
    assert metrics["lm_eval/tinymc/acc"] == pytest.approx(direct_mc(after, tok, mc_docs())[0])
    assert "forget_quality" in metrics  # TOFU's own metrics are still there


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.lm_eval.tasks=[tinymcq]", "did you mean 'tinymc'"),
        ("eval.lm_eval.include_path={tmp}/nowhere", "is not a folder"),
        ("eval.lm_eval.task=[tinymc]", "did you mean 'tasks'"),
        ("eval.lm_eval.metrics=[accuracy]", "no task reports 'accuracy'"),
        ("eval.lm_eval=[tinymc]", "must be a section"),
    ],
)
def test_bad_lm_eval_options_exit_2_before_training(world, tmp_path, capsys, override, message):
    folder, model_dir, tasks = world
    args = ["unlearn", "--preset", "text/tofu", f"data.source={folder}", f"model.path={model_dir}"]
    args += [
        "eval.lm_eval.tasks=[tinymc]",
        f"eval.lm_eval.include_path={tasks}",
        override.format(tmp=tmp_path),
    ]
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_missing_harness_says_how_to_install(world, monkeypatch):
    _, _, tasks = world
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now raises ImportError
    proto = protocol_for("muse", {"lm_eval": {"tasks": ["tinymc"], "include_path": str(tasks)}})
    with pytest.raises(ConfigError, match=r"pip install unlearnkit\[lmeval\]"):
        proto.check_setup(None)
