"""The original's cache key is the hash of everything that determines its weights (issue #18): a run with
another batch size, process count, seed, recipe, data, model or version must not reuse a cached original,
and what does not change the weights (evaluation, the method, progress bars) must not split the cache."""

from __future__ import annotations

import pytest

from unlearnkit import version
from unlearnkit.config import apply_overrides, load_preset
from unlearnkit.experiment import cache as cache_mod
from unlearnkit.experiment import cache_key, make_setup

BASE = load_preset("vision/base")


def _key(*overrides: str) -> str:
    return cache_key(make_setup(apply_overrides(BASE, list(overrides))))


@pytest.mark.parametrize(
    "override",
    [
        "engine.batch_size=128",
        "seed=1",
        "train.lr=0.01",
        "train.epochs=3",
        "data.test_fraction=0.3",
        "model.hidden=64",
        "engine.fsdp=true",
    ],
)
def test_what_changes_the_weights_changes_the_key(override):
    assert _key(override) != _key()


@pytest.mark.parametrize(
    "override",
    ["eval.mia_features=[entropy]", "method.lr=0.5", "engine.progress=false", "split.forget=0.2"],
)
def test_what_does_not_change_the_weights_keeps_the_key(override):
    assert _key(override) == _key()


def test_process_count_device_and_versions_are_in_the_key(monkeypatch):
    base = _key()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _key() != base
    monkeypatch.delenv("WORLD_SIZE")
    assert _key() == base
    if not cache_mod.torch.cuda.is_available():  # auto is the CPU here: the same weights, the same key
        assert _key("engine.device=cpu") == base
    monkeypatch.setattr(version, "__version__", "0.0.0-test")
    assert _key() != base
    monkeypatch.setattr(cache_mod.torch, "__version__", "1.0.0")
    assert _key() != base
