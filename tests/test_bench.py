"""Suites end to end on digits: the results.json contract, the oracle row, and that methods forget."""

import json

import pytest

from unlearnkit.cli import main
from unlearnkit.config import load_preset
from unlearnkit.experiment import build_method, evaluate_model, make_setup, original_model, run_method

FAST = ["train.epochs=8"]


@pytest.fixture(scope="module")
def bench_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    code = main(
        [
            "bench",
            "vision-digits",
            "--seeds",
            "2",
            "--out",
            str(out),
            "--methods",
            "ft,ga,salun",
            "--quiet",
            *FAST,
        ]
    )
    assert code == 0
    return out, json.loads((out / "results.json").read_text())


def test_results_json_contract(bench_result):
    out, res = bench_result
    assert res["suite"] == "vision-digits" and res["protocol"] == "classification" and res["kind"] == "plain"
    rows = res["rows"]
    assert {(r["method"], r["seed"]) for r in rows} == {
        (m, s) for m in ("retrain", "ft", "ga", "salun") for s in (0, 1)
    }
    for r in rows:
        assert set(r["metrics"]) >= {"UA", "RA", "TA", "MIA", "RTE", "gap"}
        for k in ("UA", "RA", "TA", "MIA"):
            assert 0.0 <= r["metrics"][k] <= 100.0
        assert r["metrics"]["RTE"] > 0
    for r in rows:
        if r["method"] == "retrain":
            assert r["metrics"]["gap"] == 0.0
        else:
            oracle = next(o["metrics"] for o in rows if o["method"] == "retrain" and o["seed"] == r["seed"])
            expect = sum(abs(r["metrics"][k] - oracle[k]) for k in ("UA", "RA", "TA", "MIA")) / 4
            assert abs(r["metrics"]["gap"] - expect) < 1e-9
    md = (out / "results.md").read_text()
    assert "| salun |" in md and "±" in md


def test_class_wise_forgetting_drops_forget_accuracy():
    cfg = load_preset("suites/vision-digits-class") | {"seed": 0}
    cfg["train"] = cfg["train"] | {"epochs": 8}
    cfg.pop("methods")
    cfg.pop("suite")
    setup = make_setup(cfg)
    original = original_model(setup).model
    before = evaluate_model(setup, original)
    model, _, _ = run_method(
        setup,
        original,
        build_method(load_preset("suites/vision-digits-class")["methods"]["salun"] | {"name": "salun"}),
    )
    after = evaluate_model(setup, model)
    assert before["UA"] < 10.0  # the original knows the class
    assert after["UA"] > 80.0  # SalUn forgets it
    assert after["TA"] > 80.0  # and keeps the other classes
    assert after["TA_forgotten"] < 30.0


def test_suite_writes_a_tradeoff_figure(bench_result):
    out, res = bench_result
    png = out / "tradeoff.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from unlearnkit.bench.plots import axes_for

    assert axes_for(res) == ("TA", "UA")


def test_suite_indexes_rows_in_the_store_and_writes_curves(bench_result):
    from unlearnkit.runs.store import open_store

    out, res = bench_result
    with open_store(out) as st:
        stored = {(r.method, r.seed): r for r in st.query(kind="suite-row")}
    assert set(stored) == {(r["method"], r["seed"]) for r in res["rows"]}
    for r in res["rows"]:
        rec = stored[(r["method"], r["seed"])]
        assert rec.status == "done" and rec.metrics == r["metrics"] and rec.suite == "vision-digits"
        assert rec.rte == r["metrics"]["RTE"] and rec.wall >= 0 and rec.family == "vision"
    for m in ("ft", "ga", "salun"):
        for seed in (0, 1):
            curve = json.loads((out / "curves" / f"{m}-seed{seed}.json").read_text())
            assert curve["method"] == m and curve["seed"] == seed and curve["history"]


def test_suites_refuse_to_run_under_several_processes(monkeypatch, tmp_path):
    """Every rank would write the same rows, store and report: a clear refusal instead."""
    from unlearnkit.bench.suite import run_suite
    from unlearnkit.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="one process"):
        run_suite("vision-digits", 1, tmp_path / "out")
    assert not (tmp_path / "out").exists()
