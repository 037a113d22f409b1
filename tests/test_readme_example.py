"""The README's Python examples, run as written on a small model and data of the kinds they name."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import unlearnkit

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_example(heading: str = "## Python") -> str:
    """The first ``python`` block under one of the README's headings."""
    section = README.read_text().split(f"\n{heading}\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _model_and_data() -> tuple[nn.Module, dict[str, np.ndarray]]:
    g = np.random.default_rng(0)
    centres = g.normal(0, 2.0, (4, 8))
    y = np.arange(240) % 4
    x = (centres[y] + g.normal(0, 1.0, (240, 8))).astype(np.float32)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(200):  # the user's trained classifier
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.as_tensor(x[:180])), torch.as_tensor(y[:180])).backward()
        opt.step()
    data = {"x": x[:180], "y": y[:180], "xt": x[180:], "yt": y[180:]}
    # forget, retain and test as numpy arrays, one of the kinds the README's comment names
    data |= {"xf": x[:20], "yf": y[:20], "xr": x[20:180], "yr": y[20:180]}
    return model.eval(), data


def test_the_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    model, data = _model_and_data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.chdir(tmp_path)  # out="runs/mine" is relative
    scope = {"my_model": model, **data}
    exec(compile(_python_example(), str(README), "exec"), scope)  # our own README's code
    printed = capsys.readouterr().out.splitlines()
    res, oracle = scope["res"], scope["oracle"]
    # "my_model itself is not modified"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(res.metrics) >= {"UA", "RA", "TA", "MIA", "RTE"} and printed[0].startswith("{")
    # the printed gap is the mean distance to the retrained model over UA, RA, TA and MIA
    want = np.mean([abs(res.metrics[k] - oracle.metrics[k]) for k in ("UA", "RA", "TA", "MIA")])
    assert float(printed[1]) == pytest.approx(want)
    assert (tmp_path / "runs" / "mine" / "model.safetensors").is_file()


def test_the_readme_tune_example_runs_as_written():
    model, data = _model_and_data()
    scope = {"my_model": model, "unlearnkit": unlearnkit}
    scope["data"] = {"forget": (data["xf"], data["yf"]), "retain": (data["xr"], data["yr"])}
    scope["data"]["test"] = (data["xt"], data["yt"])
    with pytest.warns(UserWarning, match="pass heldout="):  # it tunes on the test set it reports on
        exec(compile(_python_example("## A method on new data: `tune`"), str(README), "exec"), scope)
    # unlearn(tune=True) ran the options tune picks on its own: a step, a length and SalUn's form
    assert scope["res"].info["tune"]["best"] == scope["best"]
    assert {"lr", "epochs"} <= set(scope["best"]) <= {"lr", "epochs", "schedule"}
