"""Classifier metrics of the SalUn protocol: UA, RA, TA, MIA-Efficacy (percent) and Avg. Gap."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from unlearnkit.data.splits import Split
from unlearnkit.families.vision import VisionFamily
from unlearnkit.metrics.mia import mia_efficacy

GAP_KEYS = ("UA", "RA", "TA", "MIA")


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    if len(labels) == 0:
        return float("nan")
    return float(100.0 * (logits.argmax(1) == labels).double().mean())


def evaluate_classifier(
    model: nn.Module,
    split: Split,
    family: VisionFamily | None = None,
    mia_features: Iterable[str] = ("confidence",),
    batch_size: int = 512,
) -> dict[str, float]:
    """UA = 100 − acc(D_f), RA = acc(D_r), TA = acc(test), MIA = SVC MIA-Efficacy on ``confidence``.

    Extra MIA feature variants are reported as ``MIA_<feature>``. For class-wise splits,
    ``TA_forgotten`` is the test accuracy on the forgotten classes (ideal: 0).
    """
    fam = family or VisionFamily()
    lf = fam.predict_logits(model, split.forget, batch_size)
    lr = fam.predict_logits(model, split.retain, batch_size)
    lt = fam.predict_logits(model, split.test, batch_size)
    yf, yr, yt = split.forget.labels, split.retain.labels, split.test.labels
    out = {"UA": 100.0 - accuracy(lf, yf), "RA": accuracy(lr, yr), "TA": accuracy(lt, yt)}
    for i, feat in enumerate(mia_features):
        key = "MIA" if i == 0 else f"MIA_{feat}"
        out[key] = mia_efficacy(lr, yr, lt, yt, lf, yf, feat)
    if split.test_forgotten is not None and len(split.test_forgotten):
        out["TA_forgotten"] = accuracy(
            fam.predict_logits(model, split.test_forgotten, batch_size), split.test_forgotten.labels
        )
    return out


def avg_gap(metrics: dict[str, float], oracle: dict[str, float], keys: Iterable[str] = GAP_KEYS) -> float:
    """Avg. Gap = mean over UA, RA, TA, MIA of |metric − retrained metric| (SalUn Table 1)."""
    keys = list(keys)
    return float(sum(abs(metrics[k] - oracle[k]) for k in keys) / len(keys))
