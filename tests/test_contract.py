"""The method contract: every registered method runs on every family it declares, through the experiment
layer (config -> setup -> original -> run_method), and changes the weights of a copy while the original
stays untouched. A method that claims a family it cannot serve fails here."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from unlearnkit.config import load_preset, merge
from unlearnkit.experiment import build_method, make_setup, original_model, run_method
from unlearnkit.io import weights_sha256
from unlearnkit.registry import get_family, get_method, list_names, supports

# Small worlds of each family: a digits MLP, a tiny Llama on 20 generated authors, the shipped shapes world
# with a forget set of 8 images.
FAMILIES = {
    "vision": {
        "preset": "vision/base",
        "over": {"model": {"hidden": 32}, "train": {"epochs": 2}, "split": {"forget": 20}},
    },
    "text": {
        "preset": "text/base",
        "over": {"data": {"n_authors": 20}, "train": {"epochs": 2}, "model": {"hidden": 32, "ffn": 64}},
    },
    "diffusion": {"preset": "diffusion/base", "over": {"data": {"n_train_per_class": 8}}},
}
_SETUPS: dict[str, tuple] = {}


def _world(family: str):
    if family not in _SETUPS:
        f = FAMILIES[family]
        cfg = merge(load_preset(f["preset"]), f["over"]) | {"engine": {"batch_size": 8, "progress": False}}
        setup = make_setup(cfg)
        _SETUPS[family] = (setup, original_model(setup).model)
    return _SETUPS[family]


def _cases() -> list[tuple[str, str]]:
    return [(m, f) for m in list_names("method") for f in list_names("family") if supports(get_method(m), f)]


def _short(method: str) -> dict:
    """One epoch (two at most for methods that need an epoch to warm up) with the method's own settings."""
    fields = {f.name for f in dataclasses.fields(get_method(method).Config)}
    spec = {"name": method}
    if "epochs" in fields:
        spec["epochs"] = 1
    if "batch_size" in fields:
        spec["batch_size"] = 8
    return spec


def test_every_family_is_covered():
    assert set(FAMILIES) == set(list_names("family"))
    assert all(get_family(f) for f in FAMILIES)


@pytest.mark.parametrize(("method", "family"), _cases(), ids=lambda v: v)
def test_method_runs_on_each_family_it_declares(method, family):
    setup, original = _world(family)
    before = weights_sha256(original)
    model, seconds, fit = run_method(setup, original, build_method(_short(method), family))
    assert weights_sha256(original) == before, "the original must not be modified"
    assert weights_sha256(model) != before, f"{method} left the weights of {family} unchanged"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert seconds > 0 and fit.history, "no training record"
