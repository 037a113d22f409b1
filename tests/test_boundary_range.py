"""boundary_shrink clamps its FGSM points to the data's own range, not to a hard-coded (0, 1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unlearnkit.data.digits import load_digits
from unlearnkit.data.examples import ExampleSet
from unlearnkit.data.splits import random_split
from unlearnkit.engine.loop import Engine, EngineConfig
from unlearnkit.errors import ConfigError
from unlearnkit.families.vision import VisionFamily
from unlearnkit.methods.base import Task
from unlearnkit.methods.boundary import BoundaryShrink, data_range


def _standardised_task(eps_scale: float = 1.0):
    data = load_digits()
    x = data.train.columns["x"][:200]
    x = (x - x.mean()) / x.std()  # standardised: most values are outside (0, 1)
    y = data.train.columns["y"][:200]
    train = ExampleSet({"x": x, "y": y})
    split = random_split(train, train.take(torch.arange(50)), 20, seed=0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    engine = Engine(EngineConfig(progress=False, batch_size=16, device="cpu"))
    return Task(VisionFamily(num_classes=10), model, split, engine, seed=0), x


def _fgsm(model, batch, eps):
    xr = batch["x"].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xr), batch["y"], reduction="sum"), xr)
    return batch["x"] + eps * g.sign()


def _shrink(task, **cfg):
    m = BoundaryShrink(BoundaryShrink.Config(eps=0.5, **cfg))
    m.task = task
    m.prepare(task)
    return m


def test_standardised_inputs_are_not_clamped_to_unit_range():
    task, x = _standardised_task()
    assert (x < 0).float().mean() > 0.3  # the premise: standardised data lives outside (0, 1)
    batch = task.split.forget.all()
    m = _shrink(task)
    x_adv, _ = m.neighbour_labels(batch)
    raw = _fgsm(task.model, batch, 0.5)
    lo, hi = x.min(), x.max()  # one channel: the data's range is its global min/max
    torch.testing.assert_close(x_adv, raw.clamp(lo, hi))
    assert x_adv.min() < -0.5 and x_adv.max() > 1.5
    assert torch.equal(m.bounds[0].reshape(()), lo) and torch.equal(m.bounds[1].reshape(()), hi)


def test_explicit_range_and_no_clamp():
    task, _ = _standardised_task()
    batch = task.split.forget.all()
    raw = _fgsm(task.model, batch, 0.5)
    x_ref, _ = _shrink(task, input_range=[0.0, 1.0]).neighbour_labels(batch)  # the reference's clamp
    torch.testing.assert_close(x_ref, raw.clamp(0.0, 1.0))
    x_free, _ = _shrink(task, clamp=False).neighbour_labels(batch)
    torch.testing.assert_close(x_free, raw)


def test_data_range_is_per_channel():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(10, 2, 3, 3, generator=g)
    a[:, 1] = a[:, 1] * 10 + 50
    lo, hi = data_range(
        ExampleSet({"x": a[:6], "y": torch.zeros(6)}), ExampleSet({"x": a[6:], "y": torch.zeros(4)})
    )
    assert lo.shape == hi.shape == (1, 2, 1, 1)
    torch.testing.assert_close(lo.flatten(), torch.stack([a[:, 0].min(), a[:, 1].min()]))
    torch.testing.assert_close(hi.flatten(), torch.stack([a[:, 0].max(), a[:, 1].max()]))
    # on images already in [0, 1] (digits) the data's range is exactly the old (0, 1)
    d = load_digits().train
    lo, hi = data_range(d)
    assert float(lo) == 0.0 and float(hi) == 1.0


def test_bad_range_is_refused():
    with pytest.raises(ConfigError, match=r"input_range must be \[lo, hi\] with lo < hi"):
        BoundaryShrink.Config(input_range=[1.0, 0.0]).check()
    with pytest.raises(ConfigError, match="needs method.clamp=true"):
        BoundaryShrink.Config(discretize=True, clamp=False).check()
