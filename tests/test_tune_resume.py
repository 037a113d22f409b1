"""A stopped ``tune --out`` resumes: the runs that ended are replayed, the plan goes on as it would have."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch
from test_batchnorm import _signals, _trained_signal_net

import unlearnkit
from unlearnkit import tuning
from unlearnkit.calibration import trial_lines
from unlearnkit.tuning_store import PARTIAL, TrialStore

FORGET = list(range(0, 120, 10))  # 12 of the 120 training examples


@pytest.fixture(scope="module")
def world():
    model, x, y = _trained_signal_net()
    return model, {"train_set": (x, y), "forget": FORGET, "test": _signals(15, 1), "batch_size": 32}


class _Stop(BaseException):
    """What a killed process amounts to here: the tuning stops between two runs."""


@pytest.fixture
def trained(monkeypatch):
    """Counts the training runs that tune starts (one Engine each)."""
    runs = []

    class Counting(tuning.Engine):
        def __init__(self, *a, **kw):
            runs.append(1)
            super().__init__(*a, **kw)

    monkeypatch.setattr(tuning, "Engine", Counting)
    return runs


def _stop_after(monkeypatch, n: int) -> None:
    put = TrialStore.put

    def put_then_stop(self, options, trials):
        put(self, options, trials)
        if len(self.runs) == n:
            raise _Stop

    monkeypatch.setattr(TrialStore, "put", put_then_stop)


def _same(a, b) -> bool:
    def key(trials):
        return [(t.options, t.score, t.signals, t.run) for t in trials]

    return key(a) == key(b)


@pytest.fixture(scope="module")
def whole(world, tmp_path_factory):
    """An unbroken tuning of four runs, and its folder."""
    model, data = world
    out = tmp_path_factory.mktemp("whole")
    return unlearnkit.tune(model, "ga", max_trials=4, out=out, **data), out


def test_a_stopped_tuning_resumes_where_it_stopped(tmp_path, world, whole, monkeypatch, trained):
    model, data = world
    whole, folder = whole
    assert whole.resumed == 0 and not (folder / PARTIAL).exists()  # tune.json holds the runs now
    with monkeypatch.context() as m:
        _stop_after(m, 2)
        with pytest.raises(_Stop):
            unlearnkit.tune(model, "ga", max_trials=4, out=tmp_path / "t", **data)
    assert len(trained) == 2 and not (tmp_path / "t" / "tune.json").exists()
    kept = json.loads((tmp_path / "t" / PARTIAL).read_text())
    assert len(kept["runs"]) == 2

    # the rerun trains only the two runs left, and ends with the trials and choice of the whole tuning
    res = unlearnkit.tune(model, "ga", max_trials=4, out=tmp_path / "t", **data)
    assert len(trained) == 4 and res.resumed == 2
    assert _same(res.trials, whole.trials) and res.best == whole.best
    assert not (tmp_path / "t" / PARTIAL).exists()
    saved = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert saved["resumed"] == 2 and saved["best"] == whole.best
    assert "resumed: 2 of the runs were replayed" in trial_lines(res)[1]


def test_a_larger_budget_reuses_the_runs_other_options_do_not(tmp_path, world, whole, monkeypatch, trained):
    model, data = world
    whole, _ = whole
    with monkeypatch.context() as m:
        _stop_after(m, 2)  # a tuning of two runs, stopped as its second ended (before tune.json)
        with pytest.raises(_Stop):
            unlearnkit.tune(model, "ga", max_trials=2, out=tmp_path / "t", **data)
    assert len(trained) == 2
    # the budget is not part of the tuning's identity: a larger one goes on from the runs done
    res = unlearnkit.tune(model, "ga", max_trials=4, out=tmp_path / "t", **data)
    assert len(trained) == 4 and res.resumed == 2 and _same(res.trials, whole.trials)
    # another batch size (as another model, data or seed): the kept runs are not this tuning's
    with monkeypatch.context() as m:
        _stop_after(m, 1)
        with pytest.raises(_Stop):
            unlearnkit.tune(model, "ga", max_trials=2, out=tmp_path / "v", **data)
    assert len(trained) == 5
    other = data | {"batch_size": 16}
    with pytest.warns(UserWarning, match=f"{PARTIAL} holds the runs of another tuning"):
        res = unlearnkit.tune(model, "ga", max_trials=2, out=tmp_path / "v", **other)
    assert len(trained) == 7 and res.resumed == 0
    # a file that cannot be read (cut short) is not trusted either
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / PARTIAL).write_text('{"key": "')
    with pytest.warns(UserWarning, match="or cannot be read"):
        res = unlearnkit.tune(model, "ga", max_trials=1, out=tmp_path / "w", **data)
    assert len(trained) == 8 and res.resumed == 0


def test_the_cli_resumes_a_stopped_tuning(tmp_path, monkeypatch, trained, capsys):
    from unlearnkit.cli import main

    argv = [
        "tune",
        "--preset",
        "vision/ga",
        "--max-trials",
        "3",
        "train.epochs=3",
        "--out",
        str(tmp_path / "t"),
    ]
    with monkeypatch.context() as m:
        _stop_after(m, 2)
        with pytest.raises(_Stop):
            main(argv)
    assert len(trained) == 2
    assert main(argv) == 0 and len(trained) == 3
    saved = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert saved["resumed"] == 2 and len({t["run"] for t in saved["trials"]}) == 3
    printed = capsys.readouterr()
    assert "resumed: 2 of the runs were replayed" in printed.out
    assert f"{tmp_path / 't' / PARTIAL} holds the runs of a stopped tuning" in printed.err


def test_the_fingerprint_tells_tunings_apart(world):
    from transformers import ViTImageProcessor

    from unlearnkit.api_args import checked_split
    from unlearnkit.data.examples import ExampleSet
    from unlearnkit.data.image_processor import ProcessorTransform
    from unlearnkit.tuning_store import fingerprint

    model, data = world
    x, y = data["train_set"]

    def split(xs=x, resize=None):
        s = checked_split(model, FORGET, None, data["test"], (xs, y), None, None)[0]
        if resize is None:
            return s
        processor = ViTImageProcessor(size={"height": resize, "width": resize})
        t = s.test
        return replace(s, test=ExampleSet(t.columns, t.ids, ProcessorTransform(processor, 1, False), t.meta))

    key = fingerprint(model, split(), 4, seed=0)
    assert fingerprint(model, split(), 4, seed=0) == key  # rebuilt from the same inputs: the same
    assert fingerprint(model, split(), 4, seed=1) != key
    assert fingerprint(model, split(x.clone().index_fill_(0, torch.tensor([5]), 0.0)), 4, seed=0) != key
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    assert fingerprint(other, split(), 4, seed=0) != key
    # an image processor's config is part of the data: another resize is another tuning, the same is not
    assert fingerprint(model, split(resize=8), 4) == fingerprint(model, split(resize=8), 4)
    assert fingerprint(model, split(resize=8), 4) != fingerprint(model, split(resize=16), 4)
