"""MUSE suites on the generated corpus: the muse-synthetic contract, and the sequential protocols
(sustainability chains each request from the previous model; scalability starts every request from the
original), checked with a spying row runner (``RowRunner.run_method``) and with the rows' weight hashes."""

import json

import pytest

from unlearnkit.bench.rows import RowRunner
from unlearnkit.bench.sequential import restrict_eval
from unlearnkit.bench.suite import run_suite
from unlearnkit.cli import main
from unlearnkit.config import apply_overrides, load_preset
from unlearnkit.errors import ConfigError
from unlearnkit.experiment import make_setup
from unlearnkit.io import weights_sha256

# 20 articles: 5 forget (sust_forget_1..4 hold 1, 1, 1 and 2 of them), 10 retain, 5 holdout; a few epochs.
DATA = ["data.n_articles=20", "train.epochs=4", "eval.verbmem_max_new_tokens=12"]
SMALL = [*DATA, "methods.npo.epochs=2", "attack.relearn.steps=2"]
SEQ_SMALL = [*DATA, "methods.npo.epochs=2"]
MUSE_KEYS = {"verbmem_f", "knowmem_f", "knowmem_r", "privleak", "RTE"}


@pytest.fixture(scope="module")
def data():
    return make_setup(apply_overrides(load_preset("text/muse-base"), DATA)).data


class SpyRunner(RowRunner):
    """For every NPO run: the hash of the model it starts from, of its result, and its forget ids."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def run_method(self, setup, original, method):
        before = weights_sha256(original)
        model, seconds, fit = super().run_method(setup, original, method)
        if type(method).__name__ == "NPO":
            ids = sorted(int(i) for i in setup.split.forget.ids)
            self.calls.append({"before": before, "after": weights_sha256(model), "forget": ids})
        return model, seconds, fit


@pytest.fixture
def spy():
    return SpyRunner()


def test_muse_synthetic_contract(tmp_path):
    args = ["bench", "muse-synthetic", "--seeds", "1", "--out", str(tmp_path), "--methods", "npo", "--quiet"]
    assert main([*args, *SMALL]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    rows = {r["method"]: r["metrics"] for r in res["rows"]}
    assert set(rows) == {"retrain", "npo"}
    for m in rows.values():
        assert set(m) >= MUSE_KEYS
        assert not any(k.startswith("_") for k in m)  # the oracle's AUC stays private
        assert all(0.0 <= m[k] <= 100.0 for k in ("verbmem_f", "knowmem_f", "knowmem_r"))
    assert rows["retrain"]["privleak"] == 0.0  # the oracle compared with itself
    assert isinstance(rows["npo"]["privleak"], float) and rows["npo"]["privleak"] >= -100.0
    assert {"verbmem_f_relearned", "knowmem_f_relearned", "privleak_relearned"} <= set(rows["npo"])
    # open-unlearning's additions: the Reference MIA uses the oracle's stored NLLs (0.5 for the oracle)
    extras = {"forget_extraction_strength", "forget_exact_memorization", "mia_loss", "mia_min_k",
              "mia_reference", "mia_gradnorm", "forget_extraction_strength_relearned"}  # fmt: skip
    assert extras <= set(rows["npo"]) and rows["retrain"]["mia_reference"] == 0.5
    assert rows["npo"]["mia_reference"] != 0.5 and 0.0 <= rows["npo"]["mia_reference"] <= 1.0
    assert "| npo |" in (tmp_path / "results.md").read_text()


def test_sustainability_chains_requests(tmp_path, spy, data):
    res = run_suite("muse-synthetic-sust", 2, tmp_path, ["npo"], SEQ_SMALL, progress=False, runner=spy)
    assert res["protocol"] == "muse" and res["kind"] == "sequential"
    requests = res["requests"]
    assert requests == [f"sust_forget_{k}" for k in range(1, 5)]
    assert len(res["rows"]) == 2 * len(requests) * 2  # methods (retrain, npo) x requests x seeds
    for seed in (0, 1):
        npo = [r for r in res["rows"] if r["method"] == "npo" and r["seed"] == seed]
        calls = spy.calls[seed * len(requests) : (seed + 1) * len(requests)]
        assert [r["request"] for r in npo] == [1, 2, 3, 4]
        for k in range(1, len(requests)):
            # request k starts from the model request k-1 produced, per the spy and per the receipts
            assert calls[k]["before"] == calls[k - 1]["after"] != calls[k - 1]["before"]
            assert npo[k]["weights_before"] == npo[k - 1]["weights_after"]
        assert [r["weights_after"] for r in npo] == [c["after"] for c in calls]
        # each request unlearns only its own articles; metrics cover requests 1..k
        assert [c["forget"] for c in calls] == [sorted(data.meta["forget_ids"][q]) for q in requests]
        assert [r["n_articles"] for r in npo] == [1, 2, 3, 5]
    # the oracle compared with itself: 0, or None where its AUC on few articles is 0 (PrivLeak undefined)
    oracle = [r["metrics"]["privleak"] for r in res["rows"] if r["method"] == "retrain"]
    assert set(oracle) <= {0.0, None} and 0.0 in oracle
    assert all(MUSE_KEYS | {"verbmem_r"} <= set(r["metrics"]) for r in res["rows"])
    md = (tmp_path / "results.md").read_text()
    assert "| npo | 4 | sust_forget_4 |" in md and "±" in md


def test_scalability_starts_from_original(tmp_path, spy, data):
    res = run_suite("muse-synthetic-scal", 1, tmp_path, ["npo"], SEQ_SMALL, progress=False, runner=spy)
    npo = [r for r in res["rows"] if r["method"] == "npo"]
    calls = spy.calls
    assert len(res["rows"]) == 2 * 4 and len(calls) == 4
    assert len({c["before"] for c in calls}) == 1  # every request from the same (original) model
    assert {r["weights_before"] for r in npo} == {calls[0]["before"]}
    assert [r["start"] for r in npo] == ["original"] * 4
    sizes = [len(c["forget"]) for c in calls]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]  # growing, nested forget sets
    assert [c["forget"] for c in calls] == [
        sorted(data.meta["forget_ids"][f"scal_forget_{k}"]) for k in range(1, 5)
    ]
    assert [r["n_articles"] for r in npo] == [1, 2, 3, 5]


def test_restrict_eval_keeps_only_the_requests_articles(data):
    ev = data.meta["eval"]
    texts = ev["forget_texts"][1:3]
    sub = restrict_eval(data, texts)
    assert sub["forget_texts"] == texts
    assert [r["prompt"] for r in sub["verbmem_forget"]] == [
        r["prompt"] for r in ev["verbmem_forget"] if any(t.startswith(r["prompt"]) for t in texts)
    ]
    assert len(sub["knowmem_forget"]) == 3 * len(texts)  # three QA pairs per generated article
    for qa in sub["knowmem_forget"]:  # each answer comes from one of the two articles
        assert any(qa["answer"].removeprefix("in ") in t for t in texts)
    assert sub["knowmem_retain"] == ev["knowmem_retain"]
    with pytest.raises(ConfigError, match="KnowMem QA"):
        restrict_eval(data, ["An article the forget set never had."])


def test_sequential_suites_ask_the_protocol_not_the_family():
    """A sequential suite needs MUSE's protocol (its datasets define the requests): any other is refused
    with the protocol's name, whatever the family."""
    from types import SimpleNamespace

    from unlearnkit.bench.sequential import make_checked_setup

    class Fake(RowRunner):
        def __init__(self, protocol: str, fids: dict) -> None:
            self.setup = SimpleNamespace(
                protocol=SimpleNamespace(name=protocol),
                data=SimpleNamespace(name="d", meta={"forget_ids": fids}),
            )

        def make_setup(self, cfg):
            return self.setup

    with pytest.raises(ConfigError, match="'tofu' protocol"):
        make_checked_setup(Fake("tofu", {"a": [1]}), {}, ["a"])
    with pytest.raises(ConfigError, match="request 'b' is not a forget set"):
        make_checked_setup(Fake("muse", {"a": [1]}), {}, ["a", "b"])
    ok = Fake("muse", {"a": [1], "b": [2]})
    assert make_checked_setup(ok, {}, ["a", "b"]) is ok.setup
