"""The Python API on a user's own nn.Module and data; run folders and receipts."""

import json

import torch
from torch import nn

import unlearnkit
from unlearnkit.data.splits import ids_sha256
from unlearnkit.io import load_weights, weights_sha256


def _blobs(n_per_class=40, seed=0):
    """Three well-separated Gaussian blobs in 2-D."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    x = torch.cat([c + 0.5 * torch.randn(n_per_class, 2, generator=g) for c in centers])
    y = torch.arange(3).repeat_interleave(n_per_class)
    return x, y


class UserNet(nn.Module):
    """A model the library has never seen: two linear layers with a custom attribute layout."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(2, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x)))


def _trained_user_model():
    torch.manual_seed(0)
    model = UserNet()
    x, y = _blobs()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x, y


def test_user_module_forgets_a_class_through_the_api(tmp_path):
    model, x, y = _trained_user_model()
    xt, yt = _blobs(20, seed=1)
    before = weights_sha256(model)
    forget = y == 2
    res = unlearnkit.unlearn(
        model,
        method="rl",
        forget=(x[forget], y[forget]),
        retain=(x[~forget], y[~forget]),
        test=(xt, yt),
        lr=0.05,
        epochs=10,
        batch_size=16,
        out=tmp_path / "run",
    )
    # The user's model is untouched; the returned one is a different, changed model.
    assert weights_sha256(model) == before
    assert res.model is not model
    assert weights_sha256(res.model) != before
    # Original accuracy on class 2 is 100%; random labels on it must destroy it.
    with torch.no_grad():
        assert (model(x[forget]).argmax(1) == 2).float().mean() == 1.0
    assert res.metrics["UA"] > 50.0
    assert 0.0 <= res.metrics["MIA"] <= 100.0
    assert res.metrics["RTE"] > 0
    # Run folder: config, results, weights that reload to the same model, and a receipt with hashes.
    run = tmp_path / "run"
    assert {"config.yaml", "results.json", "model.safetensors", "receipt.json"} <= {
        p.name for p in run.iterdir()
    }
    receipt = json.loads((run / "receipt.json").read_text())
    n_forget = int(forget.sum())
    assert receipt["forget_ids_sha256"] == ids_sha256(list(range(n_forget)))
    assert receipt["forget_count"] == n_forget
    assert receipt["weights_before_sha256"] == before
    assert receipt["weights_after_sha256"] == weights_sha256(res.model)
    reloaded = load_weights(UserNet(), run / "model.safetensors")
    assert weights_sha256(reloaded) == receipt["weights_after_sha256"]
    assert json.loads((run / "results.json").read_text())["metrics"]["UA"] == res.metrics["UA"]


def test_evaluate_matches_hand_counts():
    model, x, y = _trained_user_model()
    with torch.no_grad():
        pred = model(x).argmax(1)
    forget = torch.arange(len(y)) % 10 == 0
    m = unlearnkit.evaluate(
        model, forget=(x[forget], y[forget]), retain=(x[~forget], y[~forget]), test=(x, y)
    )
    assert abs(m["UA"] - 100 * (1 - (pred[forget] == y[forget]).float().mean().item())) < 1e-9
    assert abs(m["RA"] - 100 * (pred[~forget] == y[~forget]).float().mean().item()) < 1e-9
    assert abs(m["TA"] - 100 * (pred == y).float().mean().item()) < 1e-9
    gap = unlearnkit.evaluate(
        model,
        forget=(x[forget], y[forget]),
        retain=(x[~forget], y[~forget]),
        test=(x, y),
        oracle={"UA": m["UA"] + 4, "RA": m["RA"], "TA": m["TA"] - 2, "MIA": m["MIA"]},
    )["gap"]
    assert abs(gap - 1.5) < 1e-9


def test_salun_on_user_module_keeps_half_the_weights_fixed():
    model, x, y = _trained_user_model()
    xt, yt = _blobs(20, seed=1)
    forget = torch.arange(len(y)) % 8 == 0
    res = unlearnkit.unlearn(
        model,
        method="salun",
        forget=(x[forget], y[forget]),
        retain=(x[~forget], y[~forget]),
        test=(xt, yt),
        epochs=3,
        lr=0.05,
        evaluate=False,
    )
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    after = torch.cat([p.detach().flatten() for p in res.model.parameters()])
    unchanged = (before == after).float().mean().item()
    # Global top-50% mask: about half of all weights may move, the rest are bitwise identical.
    assert 0.45 <= unchanged <= 0.6
