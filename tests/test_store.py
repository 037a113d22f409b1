"""The run store: insert / query / get, the schema, where it lives; suites that skip stored rows and resume
after a kill (plain, worst-case, sequential); curves; and the ``runs list|show|compare`` commands."""

from __future__ import annotations

import json
import sqlite3

import pytest

from unlearnkit.bench.loop import thin
from unlearnkit.bench.rows import RowRunner
from unlearnkit.bench.suite import run_suite
from unlearnkit.cli import main
from unlearnkit.errors import UnlearnkitError
from unlearnkit.runs import store as store_mod
from unlearnkit.runs.store import (
    SCHEMA_VERSION,
    config_hash,
    locate_store,
    open_store,
    store_path,
)

# vision-digits at toy scale: 2 epochs for the original and the oracle, 1 for each method.
TINY = ["train.epochs=2", "methods.ft={name: ft, epochs: 1}", "methods.ga={name: ga, epochs: 1}"]


# -- the store itself ------------------------------------------------------------------------------------
def test_insert_query_get_and_upsert(tmp_path):
    with open_store(tmp_path / "runs.sqlite") as st:
        cfg = {"b": 1, "a": {"y": 2, "x": [1, 2]}}
        i = st.upsert(
            kind="suite-row",
            config=cfg,
            suite="s",
            family="vision",
            method="ft",
            seed=0,
            metrics={"UA": 1.5, "RTE": 2.0, "_per_item": [0.1, 0.2]},
            fields={"request": 1},
            receipt={"forget_ids_sha256": "abc"},
            wall=3.0,
            path=tmp_path,
        )
        j = st.upsert(
            kind="unlearn", key="unlearn:/x", config={"c": 3}, method="ga", seed=1, metrics={"UA": 9}
        )
        rec = st.get(i)
        assert rec.metrics == {"UA": 1.5, "RTE": 2.0} and rec.private == {"_per_item": [0.1, 0.2]}
        assert rec.all_metrics["_per_item"] == [0.1, 0.2] and rec.rte == 2.0 and rec.wall == 3.0
        assert (
            rec.config == cfg and rec.fields == {"request": 1} and rec.receipt == {"forget_ids_sha256": "abc"}
        )
        assert rec.config_hash == config_hash({"a": {"x": [1, 2], "y": 2}, "b": 1})  # key order is irrelevant
        assert st.find(rec.config_hash).id == i
        assert [r.id for r in st.query(method="ga")] == [j]
        assert [r.id for r in st.query(kind="suite-row", suite="s", seed=0)] == [i]
        assert st.get(12345) is None and st.find("nope") is None
        # the same key again replaces the row, keeping its id and creation time
        k = st.upsert(kind="suite-row", config=cfg, method="ft", seed=0, metrics={"UA": 7.0})
        assert k == i and st.get(i).metrics == {"UA": 7.0} and st.get(i).created == rec.created
        assert len(st) == 2
        # a running row is not a finished result
        st.set_status(i, "failed", "boom")
        assert st.find(rec.config_hash) is None and st.get(i).error == "boom"
        with pytest.raises(UnlearnkitError, match="cannot filter"):
            st.query(color="red")
        with pytest.raises(UnlearnkitError, match="kind"):
            st.upsert(kind="other", config={})


def test_schema_version_and_two_connections(tmp_path):
    path = tmp_path / "runs.sqlite"
    a, b = open_store(path), open_store(tmp_path)  # a file or its folder
    a.upsert(kind="suite-row", config={"n": 1}, metrics={"x": 1.0})
    b.upsert(kind="suite-row", config={"n": 2}, metrics={"x": 2.0})
    assert len(a) == len(b) == 2
    a.close(), b.close()
    db = sqlite3.connect(path)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"meta", "runs"} <= tables
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(
        SCHEMA_VERSION
    )
    cols = {r[1] for r in db.execute("PRAGMA table_info(runs)")}
    assert {
        "id",
        "created",
        "kind",
        "suite",
        "family",
        "method",
        "seed",
        "config_hash",
        "config",
        "metrics",
    } <= cols
    assert {"rte", "wall", "receipt", "path", "status"} <= cols
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(UnlearnkitError, match="newer"):
        open_store(path)
    (tmp_path / "junk.sqlite").write_text("not a database")
    with pytest.raises(UnlearnkitError, match="not a usable run store"):
        open_store(tmp_path / "junk.sqlite")


def test_store_location_rules(tmp_path, monkeypatch):
    monkeypatch.delenv(store_mod.ENV, raising=False)
    assert store_path(tmp_path / "bench") == tmp_path / "bench" / "runs.sqlite"
    assert (
        store_path(tmp_path / "runs" / "a", single_run=True) == (tmp_path / "runs" / "runs.sqlite").resolve()
    )
    monkeypatch.setenv(store_mod.ENV, str(tmp_path / "all.sqlite"))
    assert store_path(tmp_path / "bench") == tmp_path / "all.sqlite"
    monkeypatch.setenv(store_mod.ENV, str(tmp_path))
    assert store_path(tmp_path / "x", single_run=True) == tmp_path / "runs.sqlite"
    monkeypatch.delenv(store_mod.ENV)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnlearnkitError, match="no run store"):
        locate_store(None)


def test_thin_keeps_at_most_500_points_with_both_ends():
    hist = [{"step": i, "loss": float(i)} for i in range(2001)]
    out = thin(hist)
    assert len(out) == 500 and out[0]["step"] == 0 and out[-1]["step"] == 2000
    assert thin(hist[:10]) == hist[:10]


# -- suites skip stored rows and resume -----------------------------------------------------------------
class SpyRunner(RowRunner):
    """Counts the rows a suite computes (run_row) and the originals it loads, and can fail one method."""

    def __init__(self) -> None:
        self.calls: dict = {"rows": [], "originals": 0, "fail": None}

    def run_row(self, setup, original, mname, spec, *args):
        if self.calls["fail"] == (mname, setup.seed):
            raise RuntimeError(f"killed during {mname}")
        self.calls["rows"].append((mname, setup.seed))
        return super().run_row(setup, original, mname, spec, *args)

    def original_model(self, setup):
        self.calls["originals"] += 1
        return super().original_model(setup)


@pytest.fixture
def spy():
    """The spy's counters; ``spy["runner"]`` is the row runner to hand to run_suite."""
    runner = SpyRunner()
    runner.calls["runner"] = runner
    return runner.calls


def _bench(out, spy, fresh=False):
    res = run_suite(
        "vision-digits", 2, out, ["ft", "ga"], TINY, progress=False, fresh=fresh, runner=spy["runner"]
    )
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(res))
    return res


def test_rerun_skips_stored_rows_and_rebuilds_identical_results(tmp_path, spy):
    first = _bench(tmp_path, spy)
    assert sorted(spy["rows"]) == sorted((m, s) for m in ("retrain", "ft", "ga") for s in (0, 1))
    spy["rows"].clear()
    spy["originals"] = 0
    second = _bench(tmp_path, spy)
    assert spy["rows"] == [] and spy["originals"] == 0  # nothing trained, nothing loaded
    assert second["rows"] == first["rows"]
    with open_store(tmp_path) as st:
        recs = st.query(kind="suite-row")
    assert len(recs) == 6 and {r.status for r in recs} == {"done"}
    assert all(r.receipt["weights_after_sha256"] and r.receipt["forget_count"] == 144 for r in recs)
    # training curves of every unlearning row (the cached oracle has none)
    curve = json.loads((tmp_path / "curves" / "ft-seed1.json").read_text())
    assert curve["method"] == "ft" and curve["seed"] == 1 and curve["tag"] is None
    assert 0 < curve["points"] <= 500 and {"epoch", "step", "phase", "loss"} <= set(curve["history"][0])
    assert sorted(p.name for p in (tmp_path / "curves").iterdir()) == [
        "ft-seed0.json", "ft-seed1.json", "ga-seed0.json", "ga-seed1.json",
    ]  # fmt: skip
    # --fresh recomputes every row
    _bench(tmp_path, spy, fresh=True)
    assert len(spy["rows"]) == 6


def test_killed_suite_resumes_with_only_the_missing_rows(tmp_path, spy):
    spy["fail"] = ("ga", 1)
    with pytest.raises(RuntimeError, match="killed during ga"):
        run_suite("vision-digits", 2, tmp_path, ["ft", "ga"], TINY, progress=False, runner=spy["runner"])
    assert not (tmp_path / "results.json").exists()
    with open_store(tmp_path) as st:
        status = {(r.method, r.seed): r.status for r in st.query()}
        stored = {(r.method, r.seed): r.metrics for r in st.query(status="done")}
    assert status.pop(("ga", 1)) == "failed" and set(status.values()) == {"done"} and len(status) == 5
    spy["fail"], spy["rows"] = None, []
    res = run_suite("vision-digits", 2, tmp_path, ["ft", "ga"], TINY, progress=False, runner=spy["runner"])
    assert spy["rows"] == [("ga", 1)]
    rows = {(r["method"], r["seed"]): r["metrics"] for r in res["rows"]}
    assert len(rows) == 6 and all(rows[k] == v for k, v in stored.items())
    oracle = rows[("retrain", 1)]  # the resumed row's gap uses the stored oracle
    expect = sum(abs(rows[("ga", 1)][k] - oracle[k]) for k in ("UA", "RA", "TA", "MIA")) / 4
    assert rows[("ga", 1)]["gap"] == pytest.approx(expect)
    with open_store(tmp_path) as st:
        assert {r.status for r in st.query()} == {"done"} and len(st) == 6


def test_changed_config_is_not_reused(tmp_path, spy):
    run_suite("vision-digits", 1, tmp_path, ["ft"], TINY, progress=False, runner=spy["runner"])
    spy["rows"].clear()
    changed = [*TINY, "methods.ft.lr=0.001"]
    run_suite("vision-digits", 1, tmp_path, ["ft"], changed, progress=False, runner=spy["runner"])
    assert spy["rows"] == [("ft", 0)]  # the oracle is the same, ft's spec changed


def test_worstcase_suite_resumes_without_selecting_again(tmp_path):
    fast = ["train.epochs=2", "select.iters=1", "select.first_epochs=1", "select.lower_epochs=1"]
    fast += ["methods.ga={name: ga, epochs: 1}"]
    counts = {"select": 0, "unlearn": 0}

    class Counting(RowRunner):
        def select(self, *a, **k):
            counts["select"] += 1
            return super().select(*a, **k)

        def run_method(self, *a, **k):
            counts["unlearn"] += 1
            return super().run_method(*a, **k)

    runner = Counting()
    first = run_suite("worstcase-digits", 1, tmp_path, ["ga"], fast, progress=False, runner=runner)
    assert counts["select"] == 1 and counts["unlearn"] == 4  # retrain and ga on both sets
    (tmp_path / "worst-seed0.json").unlink()
    counts.update(select=0, unlearn=0)
    second = run_suite("worstcase-digits", 1, tmp_path, ["ga"], fast, progress=False, runner=runner)
    assert counts == {"select": 0, "unlearn": 0}
    assert second["rows"] == first["rows"] and second["selection"] == first["selection"]
    assert first["protocol"] == "classification" and first["keys"][:2] == ["UA_random", "UA_worst"]
    rows = {r["method"]: r["metrics"] for r in first["rows"]}
    for tag in ("random", "worst"):  # the protocol's gap: Avg. Gap to retrain on the same set
        expect = sum(
            abs(rows["ga"][f"{k}_{tag}"] - rows["retrain"][f"{k}_{tag}"]) for k in ("UA", "RA", "TA", "MIA")
        )
        assert rows["ga"][f"gap_{tag}"] == pytest.approx(expect / 4) and rows["retrain"][f"gap_{tag}"] == 0.0
    assert json.loads((tmp_path / "worst-seed0.json").read_text())["size"] == 144  # rewritten from the store
    assert {p.name for p in (tmp_path / "curves").iterdir()} >= {
        "ga-seed0-random.json",
        "ga-seed0-worst.json",
    }
    with open_store(tmp_path) as st:
        assert len(st.query(kind="selection")) == 1 and len(st.query(kind="suite-row")) == 4


def test_sustainability_resume_replays_the_chain(tmp_path, monkeypatch, recwarn):
    """Killed at request 3 of NPO: the rerun evaluates only requests 3-4, rebuilding NPO's model after
    request 2 by replaying requests 1-2 (training only), to the same weights as the stored receipts."""
    small = ["data.n_articles=20", "train.epochs=4", "eval.verbmem_max_new_tokens=12", "methods.npo.epochs=2"]
    calls: list[list[int]] = []
    fail = {"at": 3}

    class Failing(RowRunner):
        def run_method(self, setup, original, method):
            if type(method).__name__ == "NPO":
                ids = sorted(int(i) for i in setup.split.forget.ids)
                calls.append(ids)
                if fail["at"] and len(calls) == fail["at"]:
                    raise RuntimeError("killed")
            return super().run_method(setup, original, method)

    runner = Failing()
    with pytest.raises(RuntimeError, match="killed"):
        run_suite("muse-synthetic-sust", 1, tmp_path, ["npo"], small, progress=False, runner=runner)
    with open_store(tmp_path) as st:
        done = {(r.method, r.fields["request"]) for r in st.query(status="done")}
    # request-major order: the oracle's row of request 3 came before NPO's, request 4 never started
    assert done == {("retrain", k) for k in (1, 2, 3)} | {("npo", 1), ("npo", 2)}
    first_two = calls[:2]
    calls.clear()
    fail["at"] = 0
    res = run_suite("muse-synthetic-sust", 1, tmp_path, ["npo"], small, progress=False, runner=runner)
    assert calls[:2] == first_two and len(calls) == 4  # replay 1-2, then run 3-4
    assert not [w for w in recwarn if "replaying" in str(w.message)]  # the replay reproduced the weights
    npo = [r for r in res["rows"] if r["method"] == "npo"]
    assert [r["request"] for r in npo] == [1, 2, 3, 4]
    for k in range(1, 4):
        assert npo[k]["weights_before"] == npo[k - 1]["weights_after"]
    assert (tmp_path / "curves" / "npo-seed0-request4.json").is_file()


# -- runs list / show / compare ---------------------------------------------------------------------------
def test_runs_cli_list_show_compare(tmp_path, capsys, monkeypatch):
    run_suite("vision-digits", 1, tmp_path, ["ft", "ga"], TINY, progress=False)
    with open_store(tmp_path) as st:
        recs = {r.method: r for r in st.query()}
    capsys.readouterr()
    assert main(["runs", "list", "--store", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for m in ("retrain", "ft", "ga"):
        assert m in out
    assert recs["ft"].config_hash[:12] in out and "vision-digits" in out
    assert main(["runs", "list", "--store", str(tmp_path / "runs.sqlite"), "--method", "ga", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in listed] == ["ga"] and listed[0]["metrics"] == recs["ga"].metrics
    monkeypatch.chdir(tmp_path)  # the default store: ./runs.sqlite
    ft = recs["ft"]
    assert main(["runs", "show", str(ft.id)]) == 0
    shown = capsys.readouterr().out
    assert f"run {ft.id}" in shown and ft.config_hash in shown and ft.receipt["weights_after_sha256"] in shown
    assert f"UA: {ft.metrics['UA']:.4g}" in shown and "name: ft" in shown
    assert main(["runs", "show", str(ft.id), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"] == ft.metrics
    ga = recs["ga"]
    assert main(["runs", "compare", str(ft.id), str(ga.id), "--json"]) == 0
    cmp = json.loads(capsys.readouterr().out)
    assert cmp["metrics"]["UA"] == [ft.metrics["UA"], ga.metrics["UA"]]
    assert cmp["diff"]["UA"] == [pytest.approx(ga.metrics["UA"] - ft.metrics["UA"])]
    assert cmp["config_diff"]["method.name"] == ["ft", "ga"]
    assert main(["runs", "compare", str(ft.id), str(ga.id)]) == 0
    table = capsys.readouterr().out
    assert "Δ" in table and f"{ga.metrics['UA'] - ft.metrics['UA']:+.4g}" in table and "method.name" in table
    assert main(["runs", "show", "999"]) == 2
    assert "no run with id 999" in capsys.readouterr().err
    assert main(["runs", "list", "--store", str(tmp_path / "nowhere")]) == 2
    assert "no run store" in capsys.readouterr().err


def test_row_identity_follows_the_contents_of_the_ids_file(tmp_path):
    """Overwriting a split's ids file changes the row key, so stale stored rows are not reused."""
    from unlearnkit.bench.loop import _versioned

    ids = tmp_path / "ids.json"
    ids.write_text("[1, 2, 3]")
    identity = {"config": {"split": {"kind": "ids", "ids_file": str(ids)}}, "method": {"name": "ft"}}
    first = config_hash(_versioned(identity))
    assert config_hash(_versioned(identity)) == first
    ids.write_text("[4, 5, 6]")
    assert config_hash(_versioned(identity)) != first
