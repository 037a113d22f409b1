"""``method="retrain"`` in the API retrains with the recipe the user gives and says which recipe it used."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from torch import nn

import unlearnkit


def _world():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 2, generator=g)
    y = (x[:, 0] > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
    return model, {"forget": (x[:8], y[:8]), "retain": (x[8:], y[8:]), "test": (x, y)}


def test_retrain_uses_the_train_recipe_and_reports_it(tmp_path):
    model, data = _world()
    recipe = {"epochs": 3, "lr": 0.05, "optimizer": "sgd", "scheduler": "constant", "momentum": 0.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a recipe was given: no warning
        res = unlearnkit.unlearn(
            model, "retrain", train=recipe, batch_size=8, evaluate=False, out=tmp_path / "run", **data
        )
    assert res.info["recipe_source"] == "train="
    assert {k: res.info["recipe"][k] for k in recipe} == recipe
    # 3 epochs over 32 retain examples at batch 8: 12 steps, so the recipe really ran
    assert max(h["step"] for h in res.history) + 1 == 3 * math.ceil(32 / 8)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["recipe_source"] == "train=" and saved["recipe"]["epochs"] == 3


def test_retrain_without_a_recipe_warns_and_says_default():
    model, data = _world()
    with pytest.warns(UserWarning, match="without train=: retraining with the default recipe"):
        res = unlearnkit.unlearn(model, "retrain", batch_size=32, evaluate=False, **data)
    assert res.info["recipe_source"] == "default"
    assert res.info["recipe"]["epochs"] == 182 and res.info["recipe"]["lr"] == 0.1


def test_retrain_with_method_options_says_so():
    model, data = _world()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = unlearnkit.unlearn(model, "retrain", epochs=2, lr=0.01, batch_size=8, evaluate=False, **data)
    assert res.info["recipe_source"] == "method options"
    assert res.info["recipe"]["epochs"] == 2 and res.info["recipe"]["lr"] == 0.01


def test_bad_recipe_names_train():
    model, data = _world()
    with pytest.raises(ValueError, match=r"train=: unknown option train\.epoch"):
        unlearnkit.unlearn(model, "retrain", train={"epoch": 3}, **data)
