"""scikit-learn's 8×8 handwritten digits: the offline default dataset (1,797 images, 10 classes).

Pixels are scaled to [0, 1] and shaped (1, 8, 8). A stratified 80/20 train/test split with a fixed
seed gives 1,437 / 360 examples; example ids are the row numbers of ``sklearn.datasets.load_digits``.
"""

from __future__ import annotations

import numpy as np
import torch

from unlearnkit.data.base import LoadedData
from unlearnkit.data.examples import ExampleSet
from unlearnkit.errors import DataError
from unlearnkit.registry import register_dataset


@register_dataset("digits")
def load_digits(test_fraction: float = 0.2, split_seed: int = 0) -> LoadedData:
    from sklearn.datasets import load_digits as sk_load
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"data.test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    d = sk_load()
    x = torch.as_tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.as_tensor(d.target, dtype=torch.long)
    ids = np.arange(len(y))
    tr, te = train_test_split(ids, test_size=test_fraction, stratify=d.target, random_state=split_seed)
    tr, te = np.sort(tr), np.sort(te)
    train = ExampleSet({"x": x[tr], "y": y[tr]}, tr, meta={"dataset": "digits"})
    test = ExampleSet({"x": x[te], "y": y[te]}, te, meta={"dataset": "digits"})
    return LoadedData(train, test, 10, (1, 8, 8), [str(i) for i in range(10)], "digits")
