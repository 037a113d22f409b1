"""The family adapter contract (see DESIGN.md: one loop, one registry, one adapter per family).

Methods written against this contract (GA, GradDiff, NPO, SimNPO, random labels, saliency masks) work
on every family. A family answers three questions about a batch: the per-example loss, the number of
loss units per example (answer tokens for an LM, 1 for a classifier), and a relabelled copy of the batch
(random label, "I don't know" answer, anchor prompt).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from unlearnkit.config import call_with_options
from unlearnkit.data.base import LoadedData
from unlearnkit.data.checks import check_loaded
from unlearnkit.data.examples import Batch
from unlearnkit.data.splits import SPLIT_OPTIONS, Split, benchmark_split, check_split_options, make_split
from unlearnkit.engine.loop import Engine
from unlearnkit.engine.optim import OptimSpec
from unlearnkit.registry import get_dataset


@dataclass
class Original:
    """The model to unlearn, where it came from (``meta``: source, cache folder, training record), and what
    its family's evaluation needs beside it (``extras``: e.g. a text-to-image world's judge)."""

    model: nn.Module
    meta: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


class Family(ABC):
    name: str = ""

    @abstractmethod
    def per_example_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Loss of each example in the batch, shape ``[B]`` (not averaged)."""

    def mean_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The batch loss that plain fine-tuning minimises (mean over examples by default)."""
        return self.per_example_loss(model, batch).mean()

    def num_units(self, batch: Batch) -> torch.Tensor:
        """How many loss units each example has (1 for a classifier); shape ``[B]``."""
        return torch.ones(len(batch["id"]))

    @abstractmethod
    def relabel(self, batch: Batch, generator: torch.Generator) -> Batch:
        """A copy of ``batch`` with the supervision replaced by a wrong/neutral target."""

    default_dataset: str = ""

    def data_spec(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """The ``data:`` section to load, given the whole resolved config (a family may fill in defaults
        that depend on the model, e.g. the text family's tokenizer)."""
        return cfg["data"]

    def load_data(self, spec: dict[str, Any]) -> LoadedData:
        """Load the dataset named in a config's ``data:`` section (its other keys are the loader's options).

        Families extend this to pick up what the data defines (classes, tokenizer)."""
        spec = dict(spec)
        name = spec.pop("name", self.default_dataset)
        spec.pop("split", None)
        data = call_with_options(get_dataset(name), (), spec, f"dataset {name!r} (data.*)")

        return check_loaded(data, name)

    # -- hooks the experiment layer asks (so nothing outside families/ tests a family's name) ------------
    split_kinds: dict[str, tuple[str, ...]] = SPLIT_OPTIONS

    def make_split(self, data: LoadedData, spec: dict[str, Any], seed: int) -> tuple[Split, LoadedData]:
        """The ``split:`` section's split of ``data`` (its keys checked against :attr:`split_kinds`), and the
        data, which a split may narrow (e.g. a TOFU forget set of listed questions rebuilds its
        evaluation sets)."""
        kind = check_split_options(spec, self.split_kinds)
        if kind == "benchmark":
            return benchmark_split(data, spec), data
        return make_split(data.train, data.test, spec, seed), data

    @abstractmethod
    def protocol(self, data: LoadedData) -> str:
        """The name of the evaluation protocol (``protocols/``) this family's ``data`` is measured by."""

    # True where a worst-case forget set is a set of prompts (captions), whose lower level is ESD
    prompt_units: bool = False
    owns_original: bool = False  # True: load_original always answers (the model is not built from model:)

    def load_original(self, model_spec: dict[str, Any], data: LoadedData, split: Split) -> Original | None:
        """The family's own trained original (e.g. a text-to-image world with its judge), or None to let the
        experiment build, load or train it from ``model:``."""
        return None

    @abstractmethod
    def build_model(self, spec: dict[str, Any], data: LoadedData) -> nn.Module:
        """Build a freshly initialised model from a config's ``model:`` section."""

    @abstractmethod
    def validate(self, model: nn.Module, data: Any) -> None:
        """Raise a clear :class:`DataError` if ``model`` cannot consume ``data``."""


def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """Re-draw every parameter of ``model`` in place from its modules' own initialisers.

    Used to retrain a user's own module from scratch when no builder is known. Modules without
    ``reset_parameters`` keep their values; BatchNorm running statistics are reset too.
    """
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for m in model.modules():
            if hasattr(m, "reset_running_stats"):
                m.reset_running_stats()
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    finally:
        torch.random.set_rng_state(gen_state)
    return model


@dataclass
class Task:
    """Everything a method (or an attack) runs on: the family adapter, the model to change (in place), the
    split, the engine and the seed; ``model_factory`` builds a fresh model (retraining), ``train_spec`` is
    the original's recipe."""

    family: Family
    model: nn.Module
    split: Split
    engine: Engine
    seed: int = 0
    model_factory: Callable[[], nn.Module] | None = None
    train_spec: OptimSpec | None = None
    info: dict[str, Any] = field(default_factory=dict)
