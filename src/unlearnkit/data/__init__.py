"""Datasets with stable example ids, and forget/retain/test splits."""

from unlearnkit.data.examples import ExampleSet, as_example_set
from unlearnkit.data.splits import Split

__all__ = ["ExampleSet", "Split", "as_example_set"]
