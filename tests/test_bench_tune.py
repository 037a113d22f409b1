"""``bench --tune``: each method of a plain suite runs with the options ``unlearnkit tune`` picks for that
seed's original and data (no oracle); rows record them, the store keeps tuned and untuned rows apart."""

import json

import pytest

from unlearnkit.bench.loop import resolved
from unlearnkit.bench.rows import RowRunner
from unlearnkit.bench.suite import run_suite
from unlearnkit.cli import main
from unlearnkit.errors import ConfigError
from unlearnkit.experiment import build_method, evaluate_model, make_setup, original_model, run_method
from unlearnkit.report import build_report

FAST = ["train.epochs=8"]


class Counting(RowRunner):
    def __init__(self) -> None:
        self.tuned: list[dict] = []
        self.ran: list[dict] = []
        self.setups = 0

    def make_setup(self, cfg):
        self.setups += 1
        return super().make_setup(cfg)

    def tune(self, setup, original, spec):
        best = super().tune(setup, original, spec)
        self.tuned.append(spec | best)
        return best

    def run_method(self, setup, original, method):
        self.ran.append({"name": method.name, "lr": method.cfg.lr, "epochs": method.cfg.epochs})
        return super().run_method(setup, original, method)


def test_bench_tune_runs_each_method_with_its_tuned_options(tmp_path, capsys):
    out = tmp_path / "tuned"
    argv = ["bench", "vision-digits", "--seeds", "1", "--methods", "ga,rl", "--quiet", "--tune", *FAST]
    assert main([*argv, "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["tune"] is True
    rows = {r["method"]: r for r in res["rows"]}
    assert "tuned" not in rows["retrain"]  # the oracle is exact: nothing to tune
    for m in ("ga", "rl"):
        assert (
            set(rows[m]["tuned"]) >= {"lr", "epochs"} and rows[m]["tune_seconds"] > rows[m]["metrics"]["RTE"]
        )
    assert "listed in results.md" in capsys.readouterr().out
    md = (out / "results.md").read_text()
    assert (
        "Options chosen by `unlearnkit tune`" in md
        and f"rl: seed 0: lr={rows['rl']['tuned']['lr']:.3g}" in md
    )
    assert "scored on the same test set the table reports" in md  # no split.heldout: it says so
    report = build_report(out, tmp_path / "report")
    assert "chosen per seed by `unlearnkit tune`, without the oracle" in report["markdown"].read_text()
    # the row is the method run with the suite's options and the tuned ones, from the same original
    setup = make_setup(resolved(res["config"], 0))
    original = original_model(setup).model
    spec = res["methods"]["rl"] | rows["rl"]["tuned"]
    model, _, _ = run_method(setup, original, build_method(spec))
    direct = evaluate_model(setup, model)
    for k in ("UA", "RA", "TA", "MIA"):
        assert rows["rl"]["metrics"][k] == pytest.approx(direct[k])
    # the same command again: every row comes from the store, nothing is tuned or trained anew
    counting = Counting()
    run_suite("vision-digits", 1, out, ["ga", "rl"], FAST, progress=False, runner=counting, tune=True)
    assert counting.tuned == [] and counting.ran == []
    # without --tune the rows are the suite's own settings: computed apart, not read from the tuned rows
    run_suite("vision-digits", 1, out, ["ga", "rl"], FAST, progress=False, runner=counting)
    assert counting.tuned == [] and [r["name"] for r in counting.ran] == ["ga", "rl"]
    assert counting.ran[1]["lr"] == pytest.approx(res["methods"]["rl"]["lr"])


def test_bench_tune_builds_each_seeds_setup_once(tmp_path):
    """Seed 0's setup, built up front to refuse a suite tune cannot score, is the one its rows use."""
    counting = Counting()
    run_suite("vision-digits", 2, tmp_path / "o", ["ga"], FAST, progress=False, runner=counting, tune=True)
    assert counting.setups == 2 and len(counting.tuned) == 2


def test_bench_tune_is_for_plain_suites_of_classifiers(tmp_path, capsys):
    with pytest.raises(ConfigError, match="plain suite"):
        run_suite("worstcase-digits", 1, tmp_path / "w", tune=True)
    code = main(["bench", "tofu-synthetic", "--tune", "--quiet", "--out", str(tmp_path / "t")])
    assert code == 2 and "classif" in capsys.readouterr().err


def test_a_suite_method_option_is_set_through_methods_not_method(tmp_path):
    """``methods.ga.lr=`` overlays one option on the preset's GA; ``method.lr=``, which a suite would
    silently ignore, is refused with the key to use."""
    from unlearnkit.config import load_preset
    from unlearnkit.experiment.suites import load_suite

    ga = load_suite("vision-digits", ["methods.ga.lr=0.5"])["methods"]["ga"]
    assert ga == load_preset("vision/ga")["method"] | {"name": "ga", "lr": 0.5}
    with pytest.raises(ConfigError, match="set methods.NAME.KEY=VALUE, e.g. methods.ga.lr=0.01"):
        run_suite("vision-digits", 1, tmp_path / "s", ["ga"], ["method.lr=0.5"], progress=False)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("override", "hint"),
    [
        ("seed=5", "--seeds N"),
        ("out=elsewhere", "--out DIR"),
        ("eval.oracle=false", "oracle.stats=FILE"),
        ("classwise:seed=1", "--seeds N"),
    ],
)
def test_a_key_the_suite_run_sets_itself_is_refused(tmp_path, capsys, override, hint):
    """``seed``, ``out`` and ``eval.oracle`` are set by the suite run (--seeds, --out, its retrain row): an
    override of one, also a composite part's, used to be accepted and change nothing; it is refused
    before any output exists, with the option to use."""
    out = tmp_path / "s"
    assert main(["bench", "quick", "--quiet", "--out", str(out), override]) == 2
    err = capsys.readouterr().err
    assert f"{override!r} would change nothing" in err and hint in err
    assert not out.exists()


def test_bench_tune_on_split_heldout_reports_on_the_rest(tmp_path):
    out = tmp_path / "clean"
    argv = ["bench", "vision-digits", "--seeds", "1", "--methods", "ga", "--quiet", "--tune", *FAST]
    assert main([*argv, "split.heldout=0.5", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    setup = make_setup(resolved(res["config"], 0))
    assert (len(setup.split.test), len(setup.split.heldout)) == (180, 180)
    # the row is GA with the tuned options measured on the 180 reported examples (split.test, the rest)
    row = next(r for r in res["rows"] if r["method"] == "ga")
    model, _, _ = run_method(
        setup, original_model(setup).model, build_method(res["methods"]["ga"] | row["tuned"])
    )
    direct = evaluate_model(setup, model)
    assert all(row["metrics"][k] == pytest.approx(direct[k]) for k in ("UA", "RA", "TA", "MIA"))
    assert round(direct["TA"] * 180 / 100, 6).is_integer()  # a count out of 180, the rest of the test set
    md = (out / "results.md").read_text()
    assert "scored on `split.heldout` (0.5 of the test set); every metric above uses the rest" in md
