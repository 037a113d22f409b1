"""Oracle-free calibration (``unlearnkit.tune``): the score by hand, and a class-wise tuning that forgets."""

from __future__ import annotations

import json
import math
import sqlite3

import pytest
import torch
from test_batchnorm import _signals, _trained_signal_net

import unlearnkit
from unlearnkit.calibration import score


def test_random_forgetting_score_by_hand():
    s = {"UA": 30.0, "RA": 95.0, "TA": 90.0, "MIA": 80.0, "MIA_heldout": 70.0}
    s |= {"n_forget": 100, "n_retain": 1000, "n_test": 500, "n_heldout": 100}
    original = {"RA": 100.0, "TA": 90.0, "MIA_heldout": 50.0}
    d_ua = abs(30 - (100 - 90))  # target: the forget set scores like the original's test set
    d_mia = abs(80 - 50)  # target: the MIA's verdict on held-out data, for the original model
    d_ra = 100 - 95 - 200 * math.sqrt((0.25 / 1000) / 1000)  # RA fell; floor of the spread at 100%
    assert score(s, original, "random") == pytest.approx((d_ua + d_mia + d_ra + 0.0) / 4)
    # a fall of RA/TA within the spread of the sets is not penalised
    calm = s | {"UA": 10.0, "MIA": 50.0, "RA": 99.95, "TA": 88.0}
    assert score(calm, original, "random") == 0.0


def test_class_forgetting_score_by_hand():
    s = {"UA": 50.0, "MIA": 70.0, "RA": 100.0, "TA": 97.0, "TA_forgotten": 20.0}
    s |= {"n_forget": 100, "n_retain": 300, "n_test": 300, "n_test_forgotten": 100}
    # a model that never saw the class: accuracy 0 on its training and test examples, MIA-Efficacy 100;
    # TA fell from 100 to 97: past the spread of 300 test examples at 100% (floored at p(1-p) = 0.25/n)
    d_ta = 100 - 97 - 200 * math.sqrt((0.25 / 300) / 300)
    want = ((100 - 50) + (100 - 70) + 20 + 0 + d_ta) / 5
    assert score(s, {"RA": 100.0, "TA": 100.0}, "class") == pytest.approx(want)
    # at chance (25% of 4 classes) the class is not forgotten yet: a model retrained without it scores 0
    assert score(s | {"UA": 75.0}, {"RA": 100.0, "TA": 100.0}, "class") > 0


@pytest.fixture(scope="module")
def world():
    model, x, y = _trained_signal_net()
    xt, yt = _signals(15, 1)
    return model, x, y, xt, yt


def test_class_wise_tuning_finds_a_step_that_forgets(tmp_path, world):
    model, x, y, xt, yt = world
    data = {"train_set": (x, y), "forget_class": 3, "test": (xt, yt)}
    res = unlearnkit.tune(model, "salun", batch_size=16, out=tmp_path / "t", **data)
    assert res.protocol == "class" and len(res.trials) <= 10
    default = next(t for t in res.trials if t.options["lr"] == pytest.approx(0.013))
    chosen = next(t for t in res.trials if t.options == res.best)
    # the method's default step barely forgets here; the tuned one takes the class to chance or below
    assert default.signals["UA"] < 50 and chosen.signals["UA"] > 70
    assert chosen.signals["TA_forgotten"] < 25 and chosen.signals["TA"] > 90
    assert chosen.score < default.score
    # unlearn with the chosen options reproduces the trial exactly
    final = unlearnkit.unlearn(model, "salun", batch_size=16, **data, **res.best)
    assert final.metrics["UA"] == chosen.signals["UA"] and final.metrics["TA"] == chosen.signals["TA"]
    # tune.json and the run store hold every trial, the chosen one marked
    saved = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert saved["best"] == res.best and len(saved["trials"]) == len(res.trials)
    with sqlite3.connect(tmp_path / "runs.sqlite") as db:
        rows = db.execute("SELECT kind, fields FROM runs").fetchall()
    assert len(rows) == len(res.trials) and {r[0] for r in rows} == {"tune"}
    assert sum(json.loads(r[1])["chosen"] for r in rows) >= 1


def test_budget_and_bad_arguments(world):
    model, x, y, xt, yt = world
    res = unlearnkit.tune(
        model, "ga", train_set=(x, y), forget_class=3, test=(xt, yt), max_trials=3, batch_size=32
    )
    assert len(res.trials) == 3 and [t.options["epochs"] for t in res.trials] == [2, 2, 2]
    with pytest.raises(ValueError, match="max_trials= must be an int >= 1"):
        unlearnkit.tune(model, "ga", train_set=(x, y), forget_class=3, test=(xt, yt), max_trials=0)
    with pytest.raises(ValueError, match="is exact: it has nothing to tune"):
        unlearnkit.tune(model, "retrain", train_set=(x, y), forget_class=3, test=(xt, yt))
    assert torch.equal(model.conv.weight, _trained_signal_net()[0].conv.weight)  # input never touched


def test_unlearn_with_tune_runs_the_chosen_options(world):
    model, x, y, xt, yt = world
    data = {"train_set": (x, y), "forget_class": 3, "test": (xt, yt)}
    res = unlearnkit.unlearn(model, "salun", tune=True, batch_size=16, **data)
    tuned = unlearnkit.tune(model, "salun", batch_size=16, **data)
    assert res.info["tune"]["best"] == tuned.best and res.info["tune"]["trials"] == len(tuned.trials)
    chosen = next(t for t in tuned.trials if t.options == tuned.best)
    assert res.metrics["UA"] == chosen.signals["UA"] > 70  # the class is forgotten, as in the trial


def test_cli_tune(tmp_path, capsys):
    from unlearnkit.cli import main

    out = tmp_path / "t"
    argv = ["tune", "--preset", "vision/ga", "--max-trials", "2", "train.epochs=3", "--out", str(out)]
    assert main(argv) == 0
    saved = json.loads((out / "tune.json").read_text())
    assert [t["options"]["lr"] for t in saved["trials"]] == pytest.approx([1e-4, 1e-3])  # ×0.01, ×0.1 of 0.01
    assert f"method.lr={saved['best']['lr']:.4g}" in capsys.readouterr().out
    for bad, phrase in (
        (["--max-trials", "0"], "--max-trials must be >= 1"),
        (["method.name=retrain"], "method.name='retrain' is exact"),
    ):
        assert main(["tune", "--preset", "vision/ga", "train.epochs=3", *bad]) == 2
        assert phrase in capsys.readouterr().err
    assert main(["tune", "--preset", "text/ga"]) == 2
    assert "classifiers" in capsys.readouterr().err


def test_cli_unlearn_with_tune_runs_and_records_the_chosen_options(tmp_path, capsys):
    import yaml

    from unlearnkit.cli import main

    out = tmp_path / "run"
    argv = ["unlearn", "--preset", "vision/ga", "--tune", "--max-trials", "2", "train.epochs=3"]
    assert main([*argv, "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    metrics = json.loads(captured.out)  # stdout stays the run's JSON; the trials went to stderr
    assert "2 trials" in captured.err and "use: method.lr=" in captured.err
    chosen = captured.err.split("use: method.lr=")[1].split()[0]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["method"]["lr"] in (pytest.approx(1e-4), pytest.approx(1e-3))  # a trial's step, not 0.01
    assert f"{saved['method']['lr']:.4g}" == chosen
    assert saved["method"]["epochs"] == 2  # half of the preset's 5: the trial's length
    # the run reproduces the chosen trial (same seed, options and data): its UA as the table printed it
    star = next(line for line in captured.err.splitlines() if line.startswith("* "))
    assert float(star.split(" UA ")[1].split()[0]) == pytest.approx(metrics["UA"], abs=0.05)
    # resuming would tune again (and change the config): refused, with what to do instead
    assert main([*argv, "--out", str(out), "--resume"]) == 2
    assert "without --tune" in capsys.readouterr().err
    assert main([*argv, "--out", str(out)]) == 2  # a run is there already: refused before any trial
    err = capsys.readouterr().err
    assert "already holds" in err and "trials" not in err
    assert main(["unlearn", "--preset", "vision/ga", "--max-trials", "3"]) == 2  # a budget for no tuning
    assert "add --tune" in capsys.readouterr().err


def test_rl_and_salun_try_the_concat_form_unless_the_user_fixes_one(world):
    model, x, y, xt, yt = world
    data = {"train_set": (x, y), "forget_class": 3, "test": (xt, yt), "batch_size": 32}
    res = unlearnkit.tune(model, "rl", **data)
    sweep, other, refine = res.trials[:5], res.trials[5:8], res.trials[8:]
    assert len(res.trials) == 10 and all("schedule" not in t.options for t in sweep)
    centre = min(sweep, key=lambda t: (round(t.score, 6), t.options["lr"])).options["lr"]
    assert [t.options["schedule"] for t in other] == ["concat"] * 3
    assert [t.options["lr"] for t in other] == pytest.approx([centre, centre * 10**0.5, centre * 10])
    best_of_eight = min(res.trials[:8], key=lambda t: (round(t.score, 6), t.options["lr"]))
    assert [t.options["lr"] for t in refine] == pytest.approx(
        [best_of_eight.options["lr"] * 10**-0.25, best_of_eight.options["lr"] * 10**0.25]
    )
    assert all(t.options.get("schedule") == best_of_eight.options.get("schedule") for t in refine)
    assert {t.options["epochs"] for t in res.trials} == {5}  # no quarter-epoch trial: the budget went here
    fixed = unlearnkit.tune(model, "rl", schedule="sequential", **data)
    assert all("schedule" not in t.options for t in fixed.trials)  # held fixed: the user chose it
    assert fixed.trials[-1].options["epochs"] == 2  # the usual plan ends at a quarter of the epochs


def test_ft_ends_with_the_best_step_at_the_full_epochs(world):
    model, x, y, xt, yt = world
    data = {"train_set": (x, y), "forget_class": 3, "test": (xt, yt), "batch_size": 32}
    res = unlearnkit.tune(model, "ft", **data)
    *half, last = res.trials
    assert len(res.trials) == 10 and {t.options["epochs"] for t in half} == {5}  # FT's default: 10 epochs
    best_half = min(half, key=lambda t: (round(t.score, 6), t.options["lr"]))
    assert last.options == {"lr": best_half.options["lr"], "epochs": 10}  # the same step, twice as long
    chosen = next(t for t in res.trials if t.options == res.best)
    assert chosen.score == min(t.score for t in res.trials)
