"""TOFU-style text suites on a forget set of listed questions (``split.kind=ids``, e.g. a worst-case
selection): the split, its evaluation sets, the TOFU metrics on them, and bad id lists."""

import json
import math
import warnings

import pytest
import torch

from unlearnkit.data.synthetic_authors import generate_tofu, write_tofu_folder
from unlearnkit.data.tofu import PRETRAIN_ID_OFFSET, tofu_texts
from unlearnkit.errors import ConfigError, DataError
from unlearnkit.experiment import make_setup

N_AUTHORS = 10  # 100 questions; retain_perturbed = author 0 (ids 0..9), forget10 = author 9 (ids 90..99)
IDS = [3, 7, 25, 48, 61, 95]  # two of them in retain_perturbed, one in forget10


def _cfg(split: dict, **data) -> dict:
    return {
        "family": "text",
        "data": {"name": "tofu-synthetic", "n_authors": N_AUTHORS} | data,
        "split": split,
        "model": {"name": "tiny-llama", "hidden": 32, "ffn": 64},
        "eval": {"batch_size": 64, "max_new_tokens": 2},
    }


@pytest.fixture(scope="module")
def setup():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = make_setup(_cfg({"kind": "ids", "ids": IDS}))
    assert any("dropped from the retain evaluation" in str(w.message) for w in caught)
    return s


@pytest.fixture(scope="module")
def model(setup):
    torch.manual_seed(0)
    return setup.new_model()


def test_ids_split_forgets_exactly_the_ids(setup):
    split = setup.split
    assert split.kind == "ids" and split.forget_ids == sorted(IDS)
    retain = set(split.retain.ids.tolist())
    assert not retain & set(IDS)
    # retain = the rest of `full` plus the real-author / world-fact pairs (as the benchmark split)
    assert {i for i in retain if i < PRETRAIN_ID_OFFSET} == set(range(10 * N_AUTHORS)) - set(IDS)
    assert len([i for i in retain if i >= PRETRAIN_ID_OFFSET]) == len(setup.data.meta["pretrain"])


def test_eval_sets_follow_the_ids(setup):
    ev = setup.data.meta["eval"]
    full_pert = generate_tofu(n_authors=N_AUTHORS)["full_perturbed"]
    assert [r["id"] for r in ev["forget"]] == sorted(IDS)
    for rec in ev["forget"]:
        want = full_pert[rec["id"]]
        assert rec["question"] == want["question"] and rec["answer"] == want["answer"]
        assert rec["paraphrased_answer"] == want["paraphrased_answer"]
        assert rec["perturbed_answers"] == want["perturbed_answer"] and len(rec["perturbed_answers"]) == 5
    # the retain evaluation (retain_perturbed = author 0) loses the forgotten questions 3 and 7
    forgotten = {r["question"] for r in ev["forget"]}
    assert [r["id"] for r in ev["retain"]] == [0, 1, 2, 4, 5, 6, 8, 9]
    assert not forgotten & {r["question"] for r in ev["retain"]}
    assert setup.split.info["retain_eval_dropped"] == [3, 7]


def test_tofu_metrics_on_the_ids_split(setup, model):
    from unlearnkit.experiment import evaluate_model

    oracle = evaluate_model(setup, model, "self")
    assert oracle["forget_quality"] == 1.0 and len(oracle["_forget_tr"]) == len(IDS)
    assert all(math.isfinite(t) and t > 0 for t in oracle["_forget_tr"])
    for key in ("forget_truth_ratio", "forget_rouge", "forget_prob", "model_utility"):
        assert math.isfinite(oracle[key])
    assert oracle["retain_eval_dropped"] == 2 and oracle["retain_eval_size"] == 8
    torch.manual_seed(1)
    other = evaluate_model(setup, setup.new_model(1), oracle)
    assert 0.0 <= other["forget_quality"] <= 1.0


def test_synthetic_tokenizer_ignores_full_perturbed():
    tables = generate_tofu(n_authors=4)
    assert len(tables["full_perturbed"]) == len(tables["full"])
    assert tofu_texts(tables) == tofu_texts({k: v for k, v in tables.items() if k != "full_perturbed"})


@pytest.mark.parametrize(
    ("ids", "match"),
    [([], "empty"), ([3, 3], "more than once"), ([5, 100_000], "not in this dataset"), (["a"], "integer")],
)
def test_bad_ids_are_clear_errors(ids, match, tmp_path):
    with pytest.raises(DataError, match=match):
        make_setup(_cfg({"kind": "ids", "ids": ids}))
    path = tmp_path / "ids.json"
    path.write_text(json.dumps({"ids": ids}))
    with pytest.raises(DataError, match=match):
        make_setup(_cfg({"kind": "ids", "ids_file": str(path)}))


def test_folder_without_full_perturbed(tmp_path):
    """Real TOFU has perturbed answers only for forget10 and retain_perturbed: other questions are an error,
    or with split.without_perturbed=partial get probability/ROUGE but no truth ratio."""
    folder = write_tofu_folder(tmp_path / "tofu", n_authors=N_AUTHORS, with_tokenizer=True)
    (folder / "full_perturbed.json").unlink()
    data = {"name": "tofu", "source": str(folder), "max_length": 64}
    with pytest.raises(DataError, match=r"2 of the 3 forget questions have no paraphrased/perturbed"):
        make_setup(_cfg({"kind": "ids", "ids": [12, 2, 50]}) | {"data": data})
    ok = make_setup(_cfg({"kind": "ids", "ids": [2, 91]}) | {"data": data})
    assert [len(r["perturbed_answers"]) for r in ok.data.meta["eval"]["forget"]] == [5, 5]
    spec = {"kind": "ids", "ids": [12, 2, 50], "without_perturbed": "partial"}
    part = make_setup(_cfg(spec) | {"data": data})
    assert part.split.info["forget_missing_perturbed"] == [12, 50]
    torch.manual_seed(0)
    out = make_eval(part)
    assert out["forget_missing_perturbed"] == 2 and len(out["_forget_tr"]) == 1
    assert math.isfinite(out["forget_truth_ratio"]) and math.isfinite(out["forget_rouge"])
    assert out["forget_quality"] == 1.0


def make_eval(setup):
    from unlearnkit.experiment import evaluate_model

    return evaluate_model(setup, setup.new_model(), "self")


def test_bad_without_perturbed_and_muse():
    with pytest.raises(DataError, match="without_perturbed"):
        make_setup(_cfg({"kind": "ids", "ids": [1], "without_perturbed": "ignore"}))
    with pytest.raises(ConfigError, match="not supported"):
        make_setup(_cfg({"kind": "ids", "ids": [1]}) | {"data": {"name": "muse-synthetic"}})
