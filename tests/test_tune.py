"""Oracle-free calibration (``unlearnkit.tune``): the score by hand, and a class-wise tuning that forgets."""

from __future__ import annotations

import copy
import json
import math
import sqlite3

import pytest
import torch
from test_batchnorm import _signals, _trained_signal_net

import unlearnkit
from unlearnkit.api_args import checked_split
from unlearnkit.calibration import Trial, choice_key, score
from unlearnkit.experiment import build_method


def test_random_forgetting_score_by_hand():
    s = {"UA": 30.0, "RA": 95.0, "TA": 90.0, "MIA": 80.0, "MIA_heldout": 70.0}
    s |= {"n_forget": 100, "n_retain": 1000, "n_test": 500, "n_heldout": 100}
    original = {"RA": 100.0, "TA": 90.0, "MIA_heldout": 50.0}
    d_ua = abs(30 - (100 - 90))  # target: the forget set scores like the original's test set
    d_mia = abs(80 - 50)  # target: the MIA's verdict on held-out data, for the original model
    d_ra = 100 - 95 - 200 * math.sqrt((0.25 / 1000) / 1000)  # RA fell; floor of the spread at 100%
    # the guards (RA, TA kept) count 1.5×: measured on larger sets than the forget-side terms
    assert score(s, original, "random") == pytest.approx((d_ua + d_mia + 1.5 * (d_ra + 0.0)) / 4)
    # a fall of RA/TA within the spread of the sets is not penalised
    calm = s | {"UA": 10.0, "MIA": 50.0, "RA": 99.95, "TA": 88.0}
    assert score(calm, original, "random") == 0.0


def test_class_forgetting_score_by_hand():
    s = {"UA": 50.0, "MIA": 70.0, "RA": 100.0, "TA": 97.0, "TA_forgotten": 20.0}
    s |= {"n_forget": 100, "n_retain": 300, "n_test": 300, "n_test_forgotten": 100}
    # a model that never saw the class: accuracy 0 on its training and test examples, MIA-Efficacy 100;
    # TA fell from 100 to 97: past the spread of 300 test examples at 100% (floored at p(1-p) = 0.25/n)
    d_ta = 100 - 97 - 200 * math.sqrt((0.25 / 300) / 300)
    want = ((100 - 50) + (100 - 70) + 20 + 1.5 * (0 + d_ta)) / 5
    assert score(s, {"RA": 100.0, "TA": 100.0}, "class") == pytest.approx(want)
    # at chance (25% of 4 classes) the class is not forgotten yet: a model retrained without it scores 0
    assert score(s | {"UA": 75.0}, {"RA": 100.0, "TA": 100.0}, "class") > 0


def test_aims_state_what_the_score_aims_at():
    from unlearnkit.calibration import aims

    original = {"UA": 0.0, "RA": 99.0, "TA": 80.0, "MIA_heldout": 24.0, "n_retain": 900, "n_test": 400}
    t = aims(original, "random")
    spread_ta = 200 * math.sqrt(0.8 * 0.2 / 400)  # two binomial std of TA on 400 examples: 4.0
    assert t == pytest.approx(
        {
            "UA": 20.0,  # 100 - TA: the forget set should miss as often as unseen examples
            "UA_spread": spread_ta,
            "MIA": 24.0,
            "RA_min": 99.0 - 200 * math.sqrt(0.99 * 0.01 / 900),
            "TA_min": 80.0 - spread_ta,
        }
    )
    # each target scores 0, and a trial just inside the floors is not penalised
    trial = original | {"UA": 20.0, "MIA": 24.0, "RA": t["RA_min"] + 1e-9, "TA": t["TA_min"] + 1e-9}
    assert score(trial, original, "random") == 0.0
    assert score(trial | {"RA": t["RA_min"] - 1.0}, original, "random") == pytest.approx(1.5 * 1.0 / 4)
    # class-wise: fixed targets, and the floors from the accuracy over the remaining classes
    cls = original | {"RA_rest": 99.5, "TA_rest": 82.0, "TA_forgotten": 90.0}
    c = aims(cls, "class")
    assert (c["UA"], c["MIA"], c["TA_forgotten"]) == (100.0, 100.0, 0.0) and "UA_spread" not in c
    assert c["TA_min"] == pytest.approx(82.0 - 200 * math.sqrt(0.82 * 0.18 / 400))


def test_class_wise_guards_aim_at_the_original_over_the_remaining_classes():
    """A model that never saw class 0 cannot mistake the others for it: the RA/TA a class-wise trial must
    keep are the original's with class 0's logit removed, not its plain accuracies."""
    from unlearnkit.calibration import damage, signals
    from unlearnkit.data.examples import ExampleSet
    from unlearnkit.data.splits import class_split

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(60, 3, generator=g)  # nn.Identity: the inputs are the logits
    y = torch.arange(60) % 3
    logits[y == 0, 0] += 2.0  # the class to forget, mostly right
    logits[y == 1, 0] += 1.0  # class 1 often taken for class 0
    split = class_split(
        ExampleSet({"x": logits[:45], "y": y[:45]}), ExampleSet({"x": logits[45:], "y": y[45:]}), 0
    )
    s = signals(torch.nn.Identity(), split, 3)
    for key, part in (("RA", split.retain), ("TA", split.test)):
        x, lab = part.columns["x"].numpy(), part.labels.numpy()
        assert s[key] == pytest.approx(100 * (x.argmax(1) == lab).mean())
        assert s[f"{key}_rest"] == pytest.approx(100 * (x[:, 1:].argmax(1) + 1 == lab).mean())
    assert s["RA_rest"] > s["RA"] + 10  # the confusions with class 0 are gone
    assert "RA_rest" not in signals(torch.nn.Identity(), split, 3, targets=False)
    trial = s | {"UA": 100.0, "MIA": 100.0, "TA_forgotten": 0.0}  # forgotten, and RA/TA as before
    plain = {key: s[key] for key in ("RA", "TA")}
    assert score(trial, plain, "class") == 0.0
    ra, ta = s["RA_rest"] - s["RA"], s["TA_rest"] - s["TA"]
    assert damage(trial, s) == pytest.approx(ra + ta)
    want = (
        1.5
        * (
            max(0, ra - 200 * math.sqrt((s["RA_rest"] / 100) * (1 - s["RA_rest"] / 100) / 30))
            + max(
                0, ta - 200 * math.sqrt(max((s["TA_rest"] / 100) * (1 - s["TA_rest"] / 100), 0.25 / 10) / 10)
            )
        )
        / 5
    )
    assert score(trial, s, "class") == pytest.approx(want) and want > 0


def test_equal_scores_go_to_the_least_damage_then_the_gentlest_step():
    original = {"RA": 100.0, "TA": 95.0}

    def trial(lr, epochs, ra, ta, sc=0.0):
        return Trial({"lr": lr, "epochs": epochs}, sc, {"RA": ra, "TA": ta}, 0.0)

    gentle = trial(0.01, 3, 99.8, 93.0)  # loses 0.2 + 2.0 points: inside the dead zone, score 0 too
    kept = trial(0.01, 5, 100.0, 94.5)  # loses 0.5: two more epochs let the retain term win back TA
    pick = min([gentle, kept], key=lambda t: choice_key(t, original, "lr"))
    assert pick is kept and choice_key(kept, original, "lr") == (0.0, 0.5, 0.05)
    twin = trial(0.001, 5, 100.0, 94.5)  # the same damage: the gentler step
    assert min([kept, twin], key=lambda t: choice_key(t, original, "lr")) is twin
    assert (
        min([trial(1.0, 1, 50, 50, sc=-1.0), kept], key=lambda t: choice_key(t, original, "lr")).score == -1
    )
    assert choice_key(Trial({"lr": 1.0}, math.inf, {"error": "NaN"}, 0.0), original, "lr")[1] == math.inf


def test_ft_and_l1_lengthen_the_best_step_that_moved_the_forget_set():
    """FT and l1-sparse forget only through training on D_r; at half length a step that forgets also dips
    RA, so the best half-length trial can be one that does nothing. Their refinement and full-length run
    start from the best trial that moved the forget set; other methods' from the best trial."""
    from unlearnkit.tuning import _centre, _moved

    original = {"UA": 0.0, "RA": 100.0, "TA": 92.0}

    def trial(lr, ua, sc):
        return Trial({"lr": lr, "epochs": 5}, sc, {"UA": ua, "RA": 95.0, "TA": 90.0, "n_forget": 100}, 0.0)

    still = trial(1e-4, 0.0, 6.0)  # does nothing: no RA lost, the forget set untouched
    noise = trial(1e-3, 1.0, 5.5)  # one example of 100: within two binomial stds of UA 0 (1 point)
    moved = trial(3e-2, 11.0, 6.5)  # forgets, but RA dips at half length
    worse = trial(1e-1, 30.0, 9.0)
    diverged = Trial({"lr": 1.0, "epochs": 5}, math.inf, {"error": "NaN"}, 0.0)
    trials = [still, noise, moved, worse, diverged]
    assert [_moved(t, original) for t in trials] == [False, False, True, True, False]
    assert _centre(trials, original, "lr", retain_only=True) is moved
    assert _centre(trials, original, "lr", retain_only=False) is noise
    assert _centre([still, noise, diverged], original, "lr", retain_only=True) is noise  # none moved


def test_ga_bisects_its_cliff():
    """GA ascends the forget loss with nothing that holds RA: one quarter-decade step can take the
    class from 30% forgotten to collapsed. When the best trial and a neighbouring step straddle the target
    (one forgets less but keeps RA/TA, the other the reverse), the last run tries the step between them."""
    from unlearnkit.tuning import _bracket, _last_run

    original = {"UA": 0.0, "RA": 100.0, "TA": 95.0}
    sizes = {"n_forget": 100, "n_retain": 900, "n_test": 450, "n_test_forgotten": 50}

    def trial(lr, ua, ra, ta):
        s = {"UA": ua, "MIA": ua, "TA_forgotten": 100.0 - ua, "RA": ra, "TA": ta} | sizes
        return Trial({"lr": lr, "epochs": 2}, score(s, original, "class"), s, 0.0)

    gentle = trial(0.01, 30.0, 99.5, 95.0)  # forgets 30%, keeps RA/TA
    cliff = trial(0.0316, 100.0, 53.0, 50.0)  # forgotten, and collapsed
    beyond = trial(0.1, 100.0, 20.0, 20.0)  # forgotten too, more damage: not across the target
    trials = [gentle, cliff, beyond]
    assert min(trials, key=lambda t: t.score) is cliff  # the score prefers the collapse to 30%
    mid = _bracket(trials, cliff, original, "lr", "class")
    assert mid == pytest.approx(math.sqrt(0.01 * 0.0316))
    assert _bracket([cliff, beyond], cliff, original, "lr", "class") is None
    ga, ft = build_method({"name": "ga"}), build_method({"name": "ft"})
    assert _last_run(ga, trials, cliff, original, "lr", "class", by_epoch=True) == (mid, 2)
    # FT trains on D_r: its last run is the best step at the full length, as before
    assert _last_run(ft, trials, cliff, original, "lr", "class", by_epoch=True) == (0.0316, ft.cfg.epochs)


@pytest.fixture(scope="module")
def world():
    model, x, y = _trained_signal_net()
    xt, yt = _signals(15, 1)
    return model, x, y, xt, yt


def test_class_wise_tuning_finds_a_step_that_forgets(tmp_path, world):
    model, x, y, xt, yt = world
    data = {"train_set": (x, y), "forget_class": 3, "test": (xt, yt)}
    res = unlearnkit.tune(model, "salun", batch_size=16, out=tmp_path / "t", **data)
    assert res.protocol == "class" and res.runs <= 10
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
    assert saved["targets"]["UA"] == 100.0 and saved["targets"]["TA_min"] < res.original["TA_rest"]
    with sqlite3.connect(tmp_path / "runs.sqlite") as db:
        rows = db.execute("SELECT kind, fields FROM runs").fetchall()
    assert len(rows) == len(res.trials) and {r[0] for r in rows} == {"tune"}
    assert sum(json.loads(r[1])["chosen"] for r in rows) >= 1


def test_budget_and_bad_arguments(world):
    model, x, y, xt, yt = world
    res = unlearnkit.tune(
        model, "ga", train_set=(x, y), forget_class=3, test=(xt, yt), max_trials=3, batch_size=32
    )
    # three runs of GA's 5 epochs at half length, each scored after epoch 1 too (GA is prefix-consistent)
    assert res.runs == 3 and [t.options["epochs"] for t in res.trials] == [1, 2] * 3
    assert [t.run for t in res.trials] == [0, 0, 1, 1, 2, 2]
    assert [t.options["lr"] for t in res.trials] == pytest.approx([1e-6, 1e-6, 1e-5, 1e-5, 1e-4, 1e-4])
    with pytest.raises(ValueError, match="max_trials= must be an int >= 1"):
        unlearnkit.tune(model, "ga", train_set=(x, y), forget_class=3, test=(xt, yt), max_trials=0)
    with pytest.raises(ValueError, match=r"max_shadow= must be None \(all\) or an int >= 1, got 0"):
        unlearnkit.tune(model, "ga", train_set=(x, y), forget_class=3, test=(xt, yt), max_shadow=0)
    with pytest.raises(ValueError, match="every_epoch= must be True or False, got 'no'"):
        unlearnkit.tune(model, "ga", train_set=(x, y), forget_class=3, test=(xt, yt), every_epoch="no")
    with pytest.raises(ValueError, match="is exact: it has nothing to tune"):
        unlearnkit.tune(model, "retrain", train_set=(x, y), forget_class=3, test=(xt, yt))
    assert torch.equal(model.conv.weight, _trained_signal_net()[0].conv.weight)  # input never touched


def test_options_are_held_fixed_as_in_unlearn(tmp_path, world):
    model, x, y, xt, yt = world
    data = {"train_set": (x, y), "forget_class": 3, "test": (xt, yt), "batch_size": 32, "max_trials": 1}
    data["lr"] = 3.0  # the sweep's centre: its first run, at 0.03, moves the model
    unlearnkit.tune(model, "salun", options={"mask_ratio": 0.2}, out=tmp_path / "a", **data)
    unlearnkit.tune(model, "salun", mask_ratio=0.2, out=tmp_path / "b", **data)
    a, b = (json.loads((tmp_path / d / "tune.json").read_text()) for d in "ab")
    assert a["config"]["method"]["mask_ratio"] == 0.2
    assert [t["signals"] for t in a["trials"]] == [t["signals"] for t in b["trials"]]
    plain = unlearnkit.tune(model, "salun", **data)  # the default mask (0.5) moves other weights
    assert plain.trials[-1].signals != a["trials"][-1]["signals"]


def test_unlearn_with_tune_runs_the_chosen_options(world, tmp_path):
    model, x, y, xt, yt = world
    data = {"train_set": (x, y), "forget_class": 3, "test": (xt, yt)}
    with pytest.warns(UserWarning, match="tune scored its trials on the test set"):  # no heldout=
        res = unlearnkit.unlearn(model, "salun", tune=True, batch_size=16, **data)
    tuned = unlearnkit.tune(model, "salun", batch_size=16, **data)
    assert res.info["tune"]["best"] == tuned.best and res.info["tune"]["trials"] == len(tuned.trials)
    assert res.info["tune"]["runs"] == tuned.runs <= 10 < len(tuned.trials)
    assert res.info["tune"]["targets"] == tuned.targets and tuned.targets["TA_forgotten"] == 0.0
    chosen = next(t for t in tuned.trials if t.options == tuned.best)
    assert res.metrics["UA"] == chosen.signals["UA"] > 70  # the class is forgotten, as in the trial
    # with out=, the calibration is published beside the run
    with pytest.warns(UserWarning, match="tune scored its trials"):
        unlearnkit.unlearn(model, "salun", tune=True, batch_size=16, out=tmp_path / "run", **data)
    saved = json.loads((tmp_path / "run" / "tune.json").read_text())
    assert saved["best"] == tuned.best
    assert [t["score"] for t in saved["trials"]] == [t.score for t in tuned.trials]
    assert (tmp_path / "run" / "tune.png").is_file() and (tmp_path / "run" / "model.safetensors").is_file()


def test_cli_tune(tmp_path, capsys):
    from unlearnkit.cli import main

    out = tmp_path / "t"
    argv = ["tune", "--preset", "vision/ga", "--max-trials", "2", "train.epochs=3", "--out", str(out)]
    assert main(argv) == 0
    saved = json.loads((out / "tune.json").read_text())
    # two runs at ×0.01 and ×0.1 of 0.01, each scored after epochs 1 and 2 of its 2 (half the preset's 5)
    assert [t["options"]["lr"] for t in saved["trials"]] == pytest.approx([1e-4, 1e-4, 1e-3, 1e-3])
    assert [t["options"]["epochs"] for t in saved["trials"]] == [1, 2, 1, 2] and saved["runs"] == 2
    printed = capsys.readouterr()
    assert saved["scored_on"] == "test" and "runs, scored on the test set; original:" in printed.out
    assert f"method.lr={saved['best']['lr']:.4g}" in printed.out
    # what the score aims at, from the original: UA = 100 - TA, with the held-out set's spread
    t, o = saved["targets"], saved["original"]
    assert t["UA"] == pytest.approx(100 - o["TA"]) and t["MIA"] == o["MIA_heldout"] and t["UA_spread"] > 0
    assert f"aims at: UA {t['UA']:.1f} ± {t['UA_spread']:.1f}, MIA {t['MIA']:.1f}; RA >= " in printed.out
    # the table and the figure beside tune.json, and the line that says so
    assert printed.out.splitlines()[0] in (out / "tune.md").read_text() and (out / "tune.png").is_file()
    assert printed.out.splitlines()[-1] == f"written to {out}: tune.json, tune.md, tune.png"
    # an --out that is a file (or under one): exit 2 before any training, naming it
    (tmp_path / "f").write_text("")
    for bad in (tmp_path / "f", tmp_path / "f" / "sub"):
        assert main([*argv[:-1], str(bad)]) == 2
        err = capsys.readouterr().err
        assert f"--out {str(bad)!r}" in err and f"{str(tmp_path / 'f')!r} is a file" in err
    # progress: a line per training run on stderr, with the run's options and the best so far
    runs = [line for line in printed.err.splitlines() if line.startswith("tune ga: run ")]
    assert [line.split(" (")[0] for line in runs] == [
        "tune ga: run 1 of at most 2",
        "tune ga: run 2 of at most 2",
    ]
    assert "(lr=0.0001 epochs=2) score" in runs[0] and "; best " in runs[1]
    assert main([*argv[:-1], str(tmp_path / "end"), "--end-only"]) == 0  # one trial per run
    saved = json.loads((tmp_path / "end" / "tune.json").read_text())
    assert [t["options"]["epochs"] for t in saved["trials"]] == [2, 2] and saved["runs"] == 2
    # the membership attack of the scoring on 200 of digits' 360 test examples (and 200 retain)
    assert main([*argv[:-1], str(tmp_path / "cut"), "--max-shadow", "200"]) == 0
    assert json.loads((tmp_path / "cut" / "tune.json").read_text())["shadow"] == [200, 360]
    assert "membership attack fit on 200 of the 360 test examples" in capsys.readouterr().out
    for bad, phrase in (
        (["--max-trials", "0"], "--max-trials must be >= 1"),
        (["--max-shadow", "-1"], "--max-shadow must be >= 0 (0: every example), got -1"),
        (["method.name=retrain"], "method.name='retrain' is exact"),
        (["method.lrr=0.1"], "unknown option method(ga).lrr"),  # config keys in the CLI, not lrr=
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
    assert "4 trials from 2 runs" in captured.err and "use: method.lr=" in captured.err
    # no validation split: the trials were scored on the test set the metrics are reported on, and it says so
    assert "note: tune scored its trials on the test set that the metrics are reported on" in captured.err
    assert "split.heldout=0.5 keeps half of it apart for the trials" in captured.err
    chosen = captured.err.split("use: method.lr=")[1].split()[0]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["method"]["lr"] in (pytest.approx(1e-4), pytest.approx(1e-3))  # a trial's step, not 0.01
    assert f"{saved['method']['lr']:.4g}" == chosen
    assert saved["method"]["epochs"] in (1, 2)  # a trial's length: 1 or 2 of the runs at half the preset's 5
    # the run reproduces the chosen trial (same seed, options and data): its UA as the table printed it
    star = next(line for line in captured.err.splitlines() if line.startswith("* "))
    assert float(star.split(" UA ")[1].split()[0]) == pytest.approx(metrics["UA"], abs=0.05)
    # the calibration is published with the run: its trials, table and figure
    tuning = json.loads((out / "tune.json").read_text())
    assert f"{tuning['best']['lr']:.4g}" == chosen and len(tuning["trials"]) == 4
    assert star in (out / "tune.md").read_text() and (out / "tune.png").is_file()
    # resuming would tune again (and change the config): refused, with what to do instead
    assert main([*argv, "--out", str(out), "--resume"]) == 2
    assert "without --tune" in capsys.readouterr().err
    assert main([*argv, "--out", str(out)]) == 2  # a run is there already: refused before any trial
    err = capsys.readouterr().err
    assert "already holds" in err and "trials" not in err
    held = [*argv, "split.heldout=0.5", "--out", str(tmp_path / "held")]
    assert main(held) == 0 and "note: tune scored" not in capsys.readouterr().err
    assert main(["unlearn", "--preset", "vision/ga", "--max-trials", "3"]) == 2  # a budget for no tuning
    assert "add --tune" in capsys.readouterr().err
    assert main(["unlearn", "--preset", "vision/ga", "--end-only"]) == 2
    assert "--end-only is tune's: add --tune" in capsys.readouterr().err
    assert main(["unlearn", "--preset", "vision/ga", "--max-shadow", "500"]) == 2
    assert "--max-shadow is tune's: add --tune" in capsys.readouterr().err


def _ends(res):
    """The trial that ends each run (its other trials are the states after earlier epochs)."""
    return [next(t for t in reversed(res.trials) if t.run == r) for r in range(res.runs)]


def test_rl_and_salun_try_the_concat_form_unless_the_user_fixes_one(world):
    model, x, y, xt, yt = world
    data = {"train_set": (x, y), "forget_class": 3, "test": (xt, yt), "batch_size": 32}
    res = unlearnkit.tune(model, "rl", **data)
    ends = _ends(res)
    sweep, other, refine = ends[:5], ends[5:8], ends[8:]
    assert res.runs == 10 and all("schedule" not in t.options for t in sweep)
    key = lambda t: choice_key(t, res.original, "lr")  # noqa: E731
    centre = min((t for t in res.trials if t.run < 5), key=key).options["lr"]
    assert [t.options["schedule"] for t in other] == ["concat"] * 3
    assert [t.options["lr"] for t in other] == pytest.approx([centre, centre * 10**0.5, centre * 10])
    best_of_eight = min((t for t in res.trials if t.run < 8), key=key)
    assert [t.options["lr"] for t in refine] == pytest.approx(
        [best_of_eight.options["lr"] * 10**-0.25, best_of_eight.options["lr"] * 10**0.25]
    )
    assert all(t.options.get("schedule") == best_of_eight.options.get("schedule") for t in refine)
    assert {t.options["epochs"] for t in ends} == {5}  # no longer run: the budget went to concat
    assert [t.options["epochs"] for t in res.trials if t.run == 0] == [1, 2, 3, 4, 5]
    fixed = unlearnkit.tune(model, "rl", schedule="sequential", **data)
    assert all("schedule" not in t.options for t in fixed.trials)  # held fixed: the user chose it
    # the plan ends with the best step at the full 10 epochs (its shorter states scored on the way)
    assert _ends(fixed)[-1].options["epochs"] == 10
    assert fixed.best == min(fixed.trials, key=lambda t: choice_key(t, fixed.original, "lr")).options
    end_only = unlearnkit.tune(model, "rl", schedule="sequential", every_epoch=False, **data)
    # scored at the end of each run only, the plan ends at a quarter of the epochs
    assert len(end_only.trials) == end_only.runs == 10 and end_only.trials[-1].options["epochs"] == 2


def test_ft_ends_with_the_best_step_at_the_full_epochs(world):
    model, x, y, xt, yt = world
    data = {"train_set": (x, y), "forget_class": 3, "test": (xt, yt), "batch_size": 32}
    res = unlearnkit.tune(model, "ft", every_epoch=False, **data)
    *half, last = res.trials
    assert len(res.trials) == 10 and {t.options["epochs"] for t in half} == {5}  # FT's default: 10 epochs
    best_half = min(half, key=lambda t: choice_key(t, res.original, "lr"))
    assert last.options == {"lr": best_half.options["lr"], "epochs": 10}  # the same step, twice as long
    chosen = next(t for t in res.trials if t.options == res.best)
    assert chosen.score == min(t.score for t in res.trials)


def test_trials_skip_the_held_out_verdict_they_never_score(world):
    """The held-out MIA verdict is a target read from the original; a trial computing its own (two SVC
    fits) would score the same, so tune leaves it out."""
    from unlearnkit.calibration import signals

    model, x, y, xt, yt = world
    split, k = checked_split(model, (x[:20], y[:20]), (x[20:], y[20:]), (xt, yt), None, None, None)
    full, lean = signals(model, split, k, seed=1), signals(model, split, k, seed=1, targets=False)
    assert set(full) - set(lean) == {"MIA_heldout", "n_heldout"}
    assert all(lean[key] == full[key] for key in lean)
    damaged = copy.deepcopy(model)
    with torch.no_grad():
        damaged.head.bias[0] += 3.0  # a trial's state: its own held-out verdict moves ...
    t_full, t_lean = signals(damaged, split, k, seed=1), signals(damaged, split, k, seed=1, targets=False)
    assert t_full["MIA_heldout"] != full["MIA_heldout"]
    assert score(t_lean, full, "random") == score(t_full, full, "random")  # ... and is not scored
    res = unlearnkit.tune(model, "ga", (x[:20], y[:20]), (x[20:], y[20:]), (xt, yt), max_trials=2, epochs=2)
    assert "MIA_heldout" in res.original and all("MIA_heldout" not in t.signals for t in res.trials)


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "ft"},
        {"name": "ga", "lr": 1e-3},
        {"name": "rl"},
        {"name": "rl", "schedule": "concat"},
        {"name": "salun"},
        {"name": "boundary_shrink", "lr": 1e-3},
        {"name": "boundary_expand", "lr": 1e-3},
    ],
    ids=lambda s: "-".join(map(str, s.values())),
)
def test_the_state_after_each_epoch_is_a_shorter_run(world, spec):
    """What lets tune score every epoch: a 2-epoch run equals epoch 2 of a 3-epoch one, and scoring it
    (eval mode, BatchNorm running stats, the MIA's SVC) changes nothing in the run."""
    from unlearnkit.calibration import signals

    model, x, y, xt, yt = world
    split, k = checked_split(model, None, None, (xt, yt), (x, y), 3, None)
    states: dict[int, dict[str, torch.Tensor]] = {}

    def hook(desc, done, current):
        assert not current.training
        signals(current, split, k)  # what tune computes at each epoch
        states[done] = {n: v.detach().clone() for n, v in current.state_dict().items()}

    three, seen = _fit(model, split, k, spec | {"epochs": 3}, hook), dict(states)
    assert sorted(seen) == [1, 2, 3] and build_method(spec).prefix_consistent
    plain, two = _fit(model, split, k, spec | {"epochs": 3}), _fit(model, split, k, spec | {"epochs": 2})
    for name, value in three.state_dict().items():
        assert torch.equal(value, plain.state_dict()[name]), name  # the hook changed nothing
        assert torch.equal(seen[2][name], two.state_dict()[name]), name  # epoch 2 of 3 = 2 epochs
    assert not torch.equal(seen[2]["conv.weight"], seen[3]["conv.weight"])  # and the epochs do train


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "l1_sparse"},
        {"name": "scrub"},
        {"name": "ft", "scheduler": "cosine"},
    ],
    ids=lambda s: "-".join(map(str, s.values())),
)
def test_methods_whose_run_depends_on_its_length_are_scored_at_the_end_only(world, spec):
    method = build_method(spec)
    assert not method.prefix_consistent
    if spec["name"] in (
        "l1_sparse",
        "ft",
    ):  # the penalty and the step decay over cfg.epochs: a real difference
        model, x, y, xt, yt = world
        split, k = checked_split(model, None, None, (xt, yt), (x, y), 3, None)
        states = {}
        _fit(
            model, split, k, spec | {"epochs": 3}, lambda d, e, m: states.setdefault(e, m.conv.weight.clone())
        )
        assert not torch.equal(states[2], _fit(model, split, k, spec | {"epochs": 2}).conv.weight)
    if spec["name"] == "l1_sparse":  # so tune scores its runs at their end only
        model, x, y, xt, yt = world
        data = {"train_set": (x, y), "forget_class": 3, "test": (xt, yt), "batch_size": 32}
        res = unlearnkit.tune(model, "l1_sparse", max_trials=2, **data)
        assert res.runs == len(res.trials) == 2 and {t.options["epochs"] for t in res.trials} == {5}


def test_the_scoring_membership_attack_fits_on_at_most_max_shadow_examples(world):
    """``max_shadow`` caps the membership attack's shadow sets in tune's scoring (its SVC's fit grows about
    quadratically with them): non-members a fixed random subset of the test set, as many retain examples
    as members; accuracies still use every example. Not binding, it is the reported protocol."""
    import numpy as np
    from sklearn.svm import SVC

    from unlearnkit.calibration import signals

    model, x, y, xt, yt = world
    data = ((x[:20], y[:20]), (x[20:], y[20:]), (xt, yt))
    split, k = checked_split(model, *data, None, None, None)
    whole = signals(model, split, k, seed=0)
    assert signals(model, split, k, 0, max_shadow=60) == whole  # 60 test examples: not binding
    cut = signals(model, split, k, 0, max_shadow=20)
    assert all(cut[key] == whole[key] for key in ("UA", "RA", "TA", "n_retain", "n_test"))

    def p_true(inputs, labels):  # the attack's feature: the softmax probability of the true label
        with torch.no_grad():
            return torch.softmax(model(inputs).double(), 1).gather(1, labels[:, None]).numpy()

    def efficacy(members, nonmembers, target):  # percent of target predicted non-member
        svc = SVC(C=3, gamma="auto", kernel="rbf").fit(
            np.concatenate([members, nonmembers]), np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
        )
        return 100.0 * (1 - svc.predict(target).mean())

    perm = np.random.RandomState(0).permutation(60)
    f, r, t = p_true(*data[0]), p_true(*data[1]), p_true(*data[2])
    assert cut["MIA"] == pytest.approx(efficacy(r[:20], t[np.sort(perm[:20])], f))
    a, b = perm[:30], perm[30:]  # the held-out verdict: shadow on 20 of one half, verdict on the other
    held = 0.5 * (efficacy(r[:20], t[a[:20]], t[b]) + efficacy(r[:20], t[b[:20]], t[a]))
    assert cut["MIA_heldout"] == pytest.approx(held)
    # tune scores every trial with the same cut, and the chosen one is reproduced with it
    opts = {"max_trials": 2, "epochs": 2, "batch_size": 32, "lr": 1.0}  # trials at lr 0.01 and 0.1
    res = unlearnkit.tune(model, "ft", *data, max_shadow=20, **opts)
    assert res.shadow == [20, 60] and res.original["MIA_heldout"] == cut["MIA_heldout"]
    chosen = next(t for t in res.trials if t.options == res.best)
    fitted = _fit(model, split, k, {"name": "ft"} | res.best)
    assert signals(fitted, split, k, 0, False, 20) == chosen.signals
    assert unlearnkit.tune(model, "ft", *data, **opts).shadow == [60, 60]  # the default, 5,000: not binding


def _fit(model, split, k, spec, hook=None):
    from unlearnkit.engine.loop import Engine, EngineConfig
    from unlearnkit.families.vision import VisionFamily
    from unlearnkit.methods.base import Task

    engine = Engine(EngineConfig(progress=False, batch_size=32, seed=0), None)
    method = build_method(spec)
    if hook is not None:  # the hook sees the state as the run would end now (boundary expand: pruned)
        engine.epoch_end = lambda desc, done, current: hook(desc, done, method.finished(current))
    task = Task(VisionFamily(num_classes=k), copy.deepcopy(model), split, engine, 0)
    method.run(task)
    return task.model


def test_trial_table_shows_each_runs_end_and_best_epoch(capsys):
    from unlearnkit.calibration import TuneResult, print_trials

    def trial(lr, epochs, sc, run):
        return Trial({"lr": lr, "epochs": epochs, "schedule": "concat"}, sc, {"UA": sc}, 0.0, run)

    runs = [trial(0.01, 1, 9.0, 0), trial(0.01, 2, 3.0, 0), trial(0.01, 3, 4.0, 0)]  # epoch 2 beats the end
    runs += [trial(0.1, 1, 8.0, 1), trial(0.1, 2, 7.0, 1), trial(0.1, 3, 6.0, 1)]  # the end is its best
    original = {"UA": 1.0, "RA": 99.0, "TA": 90.0, "MIA_heldout": 12.0, "n_retain": 900, "n_test": 100}
    res = TuneResult("rl", "random", dict(runs[1].options), runs, original)
    print_trials(res)
    out = capsys.readouterr().out.splitlines()
    assert "6 trials from 2 runs" in out[0]
    # what the score aims at, from the original: UA 100 - TA, ± two binomial std of TA on 100 examples
    assert out[1].startswith("aims at: UA 10.0 ± 6.0, MIA 12.0; RA >= 98.3, TA >= 84.0")
    rows = [line for line in out[1:] if "score" in line]
    assert [r.split("epochs=")[1].split()[0] for r in rows] == ["2", "3", "3"]
    assert rows[0].startswith("* ") and "schedule=concat" in rows[0]  # a string option, printed as is
    assert "(3 more" in out[-2] and out[-1] == "use: method.lr=0.01 method.epochs=2 method.schedule=concat"
