"""Data problems found when the data loads, named as data problems: NaN/inf features, an empty test set.

Without these checks a NaN feature surfaces much later as a diverging loss ("lower the learning rate") or a
scikit-learn message from the MIA; the fix is in the data, so the error says so.
"""

from __future__ import annotations

import torch

from unlearnkit.data.base import LoadedData
from unlearnkit.data.examples import ExampleSet
from unlearnkit.errors import DataError


def check_finite(examples: ExampleSet, name: str) -> None:
    """Refuse NaN or infinite values in the floating-point columns of ``examples`` (a DataError naming the
    set, the column, how many examples and the first ids)."""
    for col, values in examples.columns.items():
        if not isinstance(values, torch.Tensor) or not values.is_floating_point() or not len(values):
            continue
        bad = ~torch.isfinite(values.reshape(len(values), -1)).all(dim=1)
        if bad.any():
            ids = examples.ids[bad][:5].tolist()
            raise DataError(
                f"the {name} holds NaN or infinite values in column {col!r} ({int(bad.sum())} example(s), "
                f"ids {ids}{', ...' if int(bad.sum()) > 5 else ''}): a data problem; clean or drop them"
            )


def check_loaded(data: LoadedData, dataset: str) -> LoadedData:
    """Check a freshly loaded dataset: a non-empty test set, finite features in train and test."""
    if len(data.test) == 0:
        raise DataError(
            f"dataset {dataset!r} loaded an empty test set: a data problem (TA and the MIA need held-out "
            "examples); check data.test_fraction or the dataset's test files"
        )
    check_finite(data.train, f"training set of dataset {dataset!r}")
    check_finite(data.test, f"test set of dataset {dataset!r}")
    return data
