"""What a dataset loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from unlearnkit.data.examples import ExampleSet


@dataclass
class LoadedData:
    """A train and a held-out test set, plus what a model builder needs to know about them."""

    train: ExampleSet
    test: ExampleSet
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: list[str] = field(default_factory=list)
    name: str = ""
    meta: dict = field(default_factory=dict)
