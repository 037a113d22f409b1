"""``tune --out`` writes the trial table (``tune.md``) and the trials plotted (``tune.png``)."""

from __future__ import annotations

import json
import math
import sys

import pytest

from unlearnkit.calibration import Trial, TuneResult, trial_lines, write_tune
from unlearnkit.report.tune_figure import draw
from unlearnkit.tuning import trial_from

ORIGINAL = {"UA": 0.0, "RA": 99.0, "TA": 90.0, "MIA_heldout": 12.0, "n_retain": 900, "n_test": 100}


def _result() -> TuneResult:
    """Two runs of RL scored after each of 3 epochs, one run in the concat form, and one that diverged."""

    def trial(lr, epochs, sc, run, **form):
        sig = {"UA": 4.0 * epochs * lr * 100, "MIA": 10.0 + epochs, "RA": 99.0 - epochs, "TA": 90.0 - lr * 10}
        return Trial({"lr": lr, "epochs": epochs} | form, sc, sig, 0.1, run)

    trials = [trial(0.01, e, 9.0 - e, 0) for e in (1, 2, 3)]
    trials += [trial(0.1, e, 4.0 + e, 1) for e in (1, 2, 3)]
    trials += [trial(0.03, 3, 2.5, 2, schedule="concat")]
    trials.append(Trial({"lr": 1.0, "epochs": 3}, math.inf, {"error": "diverged"}, 0.1, 3))
    return TuneResult("rl", "random", {"lr": 0.03, "epochs": 3, "schedule": "concat"}, trials, ORIGINAL)


def _refuse(constant: str):
    raise AssertionError(f"{constant} is not JSON")


def _offsets(ax) -> list[tuple[float, float]]:
    return [tuple(map(float, p)) for c in ax.collections for p in c.get_offsets()]


def test_figure_draws_each_finished_trial_against_its_targets():
    res = _result()
    fig, axes, title, caption = draw(res)
    score_ax, ua_ax, mia_ax, kept_ax = axes
    finished = [t for t in res.trials if math.isfinite(t.score)]
    # the score panel: one point per finished trial, plus the chosen one starred at its own coordinates
    points = _offsets(score_ax)
    assert len(points) == len(finished) + 1
    assert points[-1] == (0.03, 2.5)
    assert sorted(points[:-1]) == sorted((t.options["lr"], t.score) for t in finished)
    # the concat trial is drawn apart (squares), after the sequential ones
    assert [len(c.get_offsets()) for c in score_ax.collections] == [6, 1, 1]
    # the forget-side panels: each trial's own signal, and the targets the score aims at (tuning.aims)
    assert sorted(y for _, y in _offsets(ua_ax)) == sorted(t.signals["UA"] for t in finished)
    aims = res.targets
    ua_lines = [line.get_ydata()[0] for line in ua_ax.get_lines()]
    assert ua_lines == [pytest.approx(100 - 90.0)] and aims["UA"] == pytest.approx(10.0)
    band = ua_ax.patches[0]  # UA ± two binomial std of TA over 100 test examples: ± 6.0
    assert (band.get_y(), band.get_height()) == (pytest.approx(4.0), pytest.approx(12.0))
    assert [line.get_ydata()[0] for line in mia_ax.get_lines()] == [12.0]
    # RA and TA: both drawn, with the floors the guards count below
    assert len(_offsets(kept_ax)) == 2 * len(finished)
    floors = [line.get_ydata()[0] for line in kept_ax.get_lines()]
    assert floors == [pytest.approx(aims["RA_min"]), pytest.approx(aims["TA_min"])]
    assert "1 diverged" in title and "squares: schedule=concat" in caption
    assert fig.axes[-1].get_ylabel() == "epochs"  # the colour bar


def test_write_tune_writes_the_table_and_the_figure(tmp_path):
    res = _result()
    write_tune(tmp_path / "t", res, {"seed": 0})
    md = (tmp_path / "t" / "tune.md").read_text()
    assert "\n".join(trial_lines(res)) in md and "![tune rl" in md and "(tune.png)" in md
    assert (tmp_path / "t" / "tune.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # strict JSON (no Infinity): the diverged trial's score is null, and reads back as inf
    saved = json.loads((tmp_path / "t" / "tune.json").read_text(), parse_constant=_refuse)
    assert saved["best"] == res.best and saved["trials"][-1]["score"] is None
    assert [trial_from(t) for t in saved["trials"]] == res.trials
    assert not [p for p in (tmp_path / "t").iterdir() if p.name.endswith(".tmp")]  # atomic writes


def test_without_matplotlib_the_table_says_how_to_get_the_figure(tmp_path, monkeypatch):
    for name in ("matplotlib.figure", "matplotlib.backends.backend_agg"):  # imports fail as without it
        monkeypatch.setitem(sys.modules, name, None)
    write_tune(tmp_path / "t", _result(), {"seed": 0})
    md = (tmp_path / "t" / "tune.md").read_text()
    assert "pip install 'unlearnkit[plots]'" in md and "tune.png" not in md
    assert not (tmp_path / "t" / "tune.png").exists()
