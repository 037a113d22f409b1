"""Shared set-up of the text-to-image method tests: a small shapes world and a task that erases its
first caption, "a red circle" (class 0), with the rest of the training set as the retain set."""

from __future__ import annotations

from typing import Any

from unlearnkit.data.base import LoadedData
from unlearnkit.data.shapes import load_shapes
from unlearnkit.data.splits import Split
from unlearnkit.engine.loop import Engine, EngineConfig
from unlearnkit.families.diffusion import DiffusionFamily
from unlearnkit.methods.base import Task


def small_shapes() -> LoadedData:
    """4 training and 2 test images per caption (36 + 18)."""
    return load_shapes(n_train_per_class=4, n_test_per_class=2, seed=0)


def red_circle_task(data: LoadedData, model: Any, **engine: Any) -> Task:
    """Forget "a red circle", keep the other 8 captions; engine batch size 4 unless given."""
    train = data.train
    forget = train.columns["y"] == 0
    split = Split(
        train.take(forget.nonzero().squeeze(1)), train.take((~forget).nonzero().squeeze(1)), data.test
    )
    engine = {"batch_size": 4, "progress": False} | engine
    return Task(
        DiffusionFamily(tokenizer=data.meta["tokenizer"]), model, split, Engine(EngineConfig(**engine))
    )
