"""``heldout=``: tune scores against a validation set, and the test set is left for the report."""

from __future__ import annotations

import warnings

import pytest
import torch
from test_batchnorm import _signals, _trained_signal_net

import unlearnkit

FORGET = list(range(0, 120, 6))  # 20 of the 120 training rows, every class


@pytest.fixture(scope="module")
def world():
    model, x, y = _trained_signal_net()
    xt, yt = _signals(15, 1)
    xh, yh = _signals(10, 2)  # a validation draw, apart from the test set
    return model, x, y, xt, yt, xh, yh


def _acc(model, x, y) -> float:
    with torch.no_grad():
        return 100.0 * (model(x).argmax(1) == y).float().mean().item()


def test_tune_scores_against_heldout_instead_of_the_test_set(world):
    model, x, y, xt, yt, xh, yh = world
    data = {"train_set": (x, y), "forget": FORGET, "max_trials": 1, "batch_size": 32}
    on_test = unlearnkit.tune(model, "ga", test=(xt, yt), **data)
    on_heldout = unlearnkit.tune(model, "ga", heldout=(xh, yh), **data)  # test= may be left out
    both = unlearnkit.tune(model, "ga", test=(xt, yt), heldout=(xh, yh), **data)
    # the targets and guards come from the held-out set: the original's TA there, its size
    assert on_heldout.original["n_test"] == len(yh) and on_test.original["n_test"] == len(yt)
    assert on_heldout.original["TA"] == pytest.approx(_acc(model, xh, yh))
    assert on_test.original["TA"] == pytest.approx(_acc(model, xt, yt))
    assert on_heldout.original["TA"] != on_test.original["TA"]
    assert both.original == on_heldout.original  # heldout= wins over test=
    assert on_heldout.scored_on == both.scored_on == "heldout" and on_test.scored_on == "test"
    assert [t.signals for t in both.trials] == [t.signals for t in on_heldout.trials]
    assert [t.signals["TA"] for t in on_heldout.trials] != [t.signals["TA"] for t in on_test.trials]


def test_unlearn_tunes_on_heldout_and_reports_on_the_test_set(world):
    model, x, y, xt, yt, xh, yh = world
    data = {"train_set": (x, y), "forget_class": 3, "batch_size": 32}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # with a validation set: nothing to warn about
        res = unlearnkit.unlearn(model, "ga", test=(xt, yt), heldout=(xh, yh), tune=True, **data)
    # without one, tune scores on the test set the metrics are reported on: said, not refused
    said = r"reported on, so TA and MIA are optimistic .*; pass heldout= \(a validation set\)"
    with pytest.warns(UserWarning, match=said):
        on_test = unlearnkit.unlearn(model, "ga", test=(xt, yt), tune=True, **data)
    assert on_test.info["tune"]["scored_on"] == "test"
    tuned = unlearnkit.tune(model, "ga", heldout=(xh, yh), **data)
    assert res.info["tune"]["best"] == tuned.best and res.info["tune"]["scored_on"] == "heldout"
    # the reported TA is on the test set without the class (the SalUn protocol), not on heldout=
    keep = yt != 3
    assert res.metrics["TA"] == pytest.approx(_acc(res.model, xt[keep], yt[keep]))
    assert res.metrics["TA_forgotten"] == pytest.approx(_acc(res.model, xt[~keep], yt[~keep]))
    chosen = next(t for t in tuned.trials if t.options == tuned.best)
    assert chosen.signals["n_test"] == int((yh != 3).sum())  # the trials were scored on heldout=
    assert res.metrics["UA"] == chosen.signals["UA"]  # the same state as the chosen trial


def test_heldout_must_be_unseen_and_goes_with_tune(world):
    model, x, y, xt, yt, xh, yh = world
    seen = (torch.cat([xh, x[5:6]]), torch.cat([yh, y[5:6]]))  # one training row among the held-out ones
    with pytest.raises(ValueError, match=r"heldout= shares 1 example\(s\) with train_set= .*train_set\[5\]"):
        unlearnkit.tune(model, "ga", train_set=(x, y), forget=FORGET, heldout=seen)
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[FORGET] = False
    pair = {"forget": (x[FORGET], y[FORGET]), "retain": (x[keep], y[keep])}
    with pytest.raises(ValueError, match=r"heldout= shares 1 example\(s\) with retain= .*retain\[4\]"):
        unlearnkit.tune(model, "ga", heldout=seen, **pair)
    with pytest.raises(ValueError, match="heldout= is what tune scores against: pass tune=True"):
        unlearnkit.unlearn(model, "ga", test=(xt, yt), heldout=(xh, yh), **pair)
    only_3 = (xh[yh == 3], yh[yh == 3])
    with pytest.raises(ValueError, match=r"heldout= \(without forget_class=\) is empty"):
        unlearnkit.tune(model, "ga", train_set=(x, y), forget_class=3, heldout=only_3)
    with pytest.raises(ValueError, match="heldout= has labels in"):
        unlearnkit.tune(model, "ga", train_set=(x, y), forget=FORGET, heldout=(xh, yh + 4))


def test_config_split_heldout_is_carved_from_the_test_set_and_scored_by_tune(tmp_path, capsys):
    import json

    from unlearnkit.cli import main
    from unlearnkit.config import load_preset
    from unlearnkit.experiment import make_setup
    from unlearnkit.tuning import scored_split

    cfg = load_preset("vision/ga")
    plain = make_setup(cfg)
    setup = make_setup(cfg | {"split": {"kind": "random", "forget": 0.1, "heldout": 0.25}})
    held, test, whole = setup.split.heldout, setup.split.test, plain.split.test
    # a quarter of digits' 360 test examples, apart from the rest, which every metric then uses
    assert (len(held), len(test)) == (90, 270) and not set(held.ids.tolist()) & set(test.ids.tolist())
    assert sorted(held.ids.tolist() + test.ids.tolist()) == sorted(whole.ids.tolist())
    assert setup.split.forget_ids == plain.split.forget_ids  # the forget set does not move
    assert scored_split(setup.split).test is held and scored_split(plain.split) is plain.split
    # class-wise: the held-out examples of the class become the scored test_forgotten
    cls = make_setup(cfg | {"split": {"kind": "class", "classes": 3, "heldout": 90}}).split
    scored = scored_split(cls)
    assert set(scored.test_forgotten.labels.tolist()) == {3} and 3 not in scored.test.labels.tolist()
    assert (
        len(scored.test) + len(scored.test_forgotten) == 90 and len(cls.test) + len(cls.test_forgotten) == 270
    )
    out = tmp_path / "t"
    argv = ["tune", "--preset", "vision/ga", "--max-trials", "1", "train.epochs=3", "split.heldout=0.25"]
    assert main([*argv, "--out", str(out)]) == 0
    saved = json.loads((out / "tune.json").read_text())
    assert saved["original"]["n_test"] == 90 and saved["config"]["split"]["heldout"] == 0.25
    assert saved["scored_on"] == "heldout"
    assert "scored on the validation set (heldout)" in capsys.readouterr().out
    for bad in ("split.heldout=1.5", "split.heldout=0", "split.heldout=360", "split.heldout=half"):
        assert main(["tune", "--preset", "vision/ga", bad]) == 2
        assert "split.heldout must be a fraction in (0, 1) or a count in 1..359" in capsys.readouterr().err
