"""The Python API takes data in the forms users have it: numpy arrays, lists, torch and Hugging Face
datasets, row indices into a training set, a class to forget, and a preset by name.

Most checks compare with the same call on plain tensors: the same seed on the same examples must give
bit-identical weights, whatever container the examples came in.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import TensorDataset

import unlearnkit
from unlearnkit.data.splits import ids_sha256
from unlearnkit.io import weights_sha256


def _blobs(n_per_class=20, seed=0, k=3):
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0], [0.0, -3.0]])[:k]
    x = torch.cat([c + 0.6 * torch.randn(n_per_class, 2, generator=g) for c in centers])
    return x, torch.arange(k).repeat_interleave(n_per_class)


def _model(k=3):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, k))
    x, y = _blobs(k=k)
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    return m


@pytest.fixture(scope="module")
def world():
    x, y = _blobs()
    xt, yt = _blobs(10, seed=1)
    fmask = torch.zeros(len(y), dtype=torch.bool)
    fmask[::6] = True  # a random-like 10 of 60
    return _model(), x, y, xt, yt, fmask


def _run(model, forget, retain, test, **kw):
    kw = {"method": "rl", "lr": 0.05, "epochs": 3, "batch_size": 8} | kw
    return unlearnkit.unlearn(model, forget=forget, retain=retain, test=test, **kw)


def test_numpy_lists_and_datasets_give_the_same_result_as_tensors(world):
    model, x, y, xt, yt, f = world
    ref = _run(model, (x[f], y[f]), (x[~f], y[~f]), (xt, yt))
    ref_hash = weights_sha256(ref.model)
    assert ref_hash != weights_sha256(model)
    as_numpy = _run(
        model, (x[f].numpy(), y[f].numpy()), (x[~f].numpy(), y[~f].numpy()), (xt.numpy(), yt.numpy())
    )
    as_lists = _run(model, [x[f].tolist(), y[f].tolist()], [x[~f].tolist(), y[~f].tolist()], (xt, yt))
    as_pairs = _run(
        model, list(zip(x[f], y[f], strict=True)), TensorDataset(x[~f], y[~f]), TensorDataset(xt, yt)
    )
    float_labels = _run(model, (x[f], y[f].double()), (x[~f], y[~f].float()), (xt, yt.numpy().astype(float)))
    for res in (as_numpy, as_lists, as_pairs, float_labels):
        assert weights_sha256(res.model) == ref_hash
        assert res.metrics["UA"] == ref.metrics["UA"] and res.metrics["MIA"] == ref.metrics["MIA"]


def test_hugging_face_datasets_are_accepted(world):
    datasets = pytest.importorskip("datasets")
    model, x, y, xt, yt, f = world
    ref = _run(model, (x[f], y[f]), (x[~f], y[~f]), (xt, yt))

    def hf(xs, ys):
        return datasets.Dataset.from_dict({"features": xs.tolist(), "label": ys.tolist()})

    res = _run(model, hf(x[f], y[f]), hf(x[~f], y[~f]), hf(xt, yt))
    assert weights_sha256(res.model) == weights_sha256(ref.model)


def test_hugging_face_image_columns_become_chw_in_unit_range():
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    from unlearnkit.data.user import to_example_set

    rgb = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(a) for a in rgb], "label": [0, 1]})
    ds = ds.cast_column("image", datasets.Image())
    s, _ = to_example_set(ds, "test")
    assert s.columns["x"].shape == (2, 3, 4, 5)
    assert torch.allclose(s.columns["x"], torch.as_tensor(rgb).permute(0, 3, 1, 2).float() / 255)


def test_train_set_with_indices_or_mask_equals_passing_the_rows(tmp_path, world):
    model, x, y, xt, yt, f = world
    idx = f.nonzero().squeeze(1)
    by_idx = _run(model, idx.numpy(), None, (xt, yt), train_set=(x, y), out=tmp_path / "a")
    by_mask = _run(model, f, None, (xt, yt), train_set=(x, y))
    assert weights_sha256(by_idx.model) == weights_sha256(by_mask.model)
    # the receipt names the forgotten rows by their index in train_set
    assert by_idx.receipt["forget_ids_sha256"] == ids_sha256(idx.tolist())
    assert by_idx.receipt["forget_count"] == int(f.sum())


def test_forget_class_follows_the_salun_protocol(world):
    model, x, y, xt, yt, _ = world
    res = _run(model, None, None, (xt, yt), train_set=(x, y), forget_class=2, lr=0.1, epochs=10)
    m = res.model
    with torch.no_grad():
        pred_t = m(xt).argmax(1)
        pred_tr = m(x).argmax(1)
    keep, drop = yt != 2, yt == 2
    # TA leaves the class out; TA_forgotten is the class's own test accuracy; UA is on its training rows
    assert res.metrics["TA"] == pytest.approx(100 * (pred_t[keep] == yt[keep]).double().mean().item())
    assert res.metrics["TA_forgotten"] == pytest.approx(100 * (pred_t[drop] == 2).double().mean().item())
    assert res.metrics["UA"] == pytest.approx(100 - 100 * (pred_tr[y == 2] == 2).double().mean().item())
    assert res.metrics["UA"] > 80 and res.metrics["TA_forgotten"] < 20  # the class is gone
    # the same through evaluate(), and with forget=/retain= given as data
    ev = unlearnkit.evaluate(m, test=(xt, yt), train_set=(x, y), forget_class=2)
    assert ev["TA_forgotten"] == res.metrics["TA_forgotten"] and ev["TA"] == res.metrics["TA"]
    ev2 = unlearnkit.evaluate(
        m, forget=(x[y == 2], y[y == 2]), retain=(x[y != 2], y[y != 2]), test=(xt, yt), forget_class=2
    )
    assert ev2["TA"] == ev["TA"] and ev2["UA"] == ev["UA"]


def test_preset_by_name_sets_the_method_and_its_options(tmp_path, world):
    model, x, y, xt, yt, f = world
    res = unlearnkit.unlearn(
        model,
        forget=(x[f], y[f]),
        retain=(x[~f], y[~f]),
        test=(xt, yt),
        preset="vision/salun",
        epochs=2,
        out=tmp_path / "run",
    )
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["preset"] == "vision/salun"
    # from the preset: salun with lr 7e-4, concat schedule, mask ratio 0.5; the keyword overrides epochs
    assert cfg["method"] | {} == {
        "name": "salun",
        "lr": 7e-4,
        "epochs": 2,
        "schedule": "concat",
        "mask_ratio": 0.5,
    }
    assert json.loads((tmp_path / "run" / "receipt.json").read_text())["method"] == "salun"
    assert weights_sha256(res.model) != weights_sha256(model)
    with pytest.raises(ValueError, match="method='ga' differs from preset='vision/salun'"):
        unlearnkit.unlearn(
            model, "ga", forget=(x[f], y[f]), retain=(x[~f], y[~f]), test=(xt, yt), preset="vision/salun"
        )


def test_inputs_keep_their_own_shape_and_range():
    """A 1-D signal model on standardised data, values far outside [0, 1]: nothing is rescaled."""
    from unlearnkit.data.user import to_example_set

    g = torch.Generator().manual_seed(0)
    x = 5 * torch.randn(8, 1, 16, generator=g) - 3
    s, _ = to_example_set((x.numpy(), np.arange(8) % 2), "forget")
    assert torch.equal(s.columns["x"], x)
    assert s.columns["y"].dtype == torch.long
