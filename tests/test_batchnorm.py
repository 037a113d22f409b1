"""Classifiers with BatchNorm: hashing, the CLI and the API, and how running statistics move.

BatchNorm holds a 0-dim ``num_batches_tracked`` buffer, which the weight hash used to crash on. These tests
run each of our BatchNorm models through the CLI and a user's own BatchNorm module through the API, and
check the receipt's hashes against the saved file, that the forget set was actually unlearned, and that
iterative methods update the running statistics (train mode, as the reference SalUn code does).
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import unlearnkit
from unlearnkit.cli import main
from unlearnkit.io import load_weights, state_dict_sha256, weights_sha256
from unlearnkit.registry import get_model


def _old_hash(sd: dict[str, torch.Tensor]) -> str:
    """The hash as written before the fix, for state dicts without 0-dim tensors."""
    h = hashlib.sha256()
    for k, v in sorted(sd.items()):
        v = v.detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(v.dtype).encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def test_hash_accepts_zero_dim_tensors_and_keeps_old_hashes():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).state_dict()
    assert state_dict_sha256(plain) == _old_hash(plain)  # existing receipts stay valid
    bn = nn.BatchNorm1d(3).state_dict()
    assert bn["num_batches_tracked"].ndim == 0
    base = state_dict_sha256(bn)
    # the 0-dim counter is hashed by value: a different count gives a different hash ...
    bumped = dict(bn) | {"num_batches_tracked": torch.tensor(5)}
    assert state_dict_sha256(bumped) != base
    # ... and by shape: the same value as a 1-element vector is a different tensor
    as_vector = dict(bn) | {"num_batches_tracked": bn["num_batches_tracked"].reshape(1)}
    assert state_dict_sha256(as_vector) != base
    # a 0-dim float tensor too
    assert state_dict_sha256({"s": torch.tensor(1.5)}) != state_dict_sha256({"s": torch.tensor(2.5)})


@pytest.mark.parametrize(
    ("name", "override"),
    [
        ("cnn", "model.name=cnn"),  # over the preset's MLP: its hidden/depth options are dropped
        ("resnet-tiny", "model.name=resnet-tiny"),
        ("resnet18", "model={name: resnet18}"),
    ],
)
def test_cli_unlearns_batchnorm_models(tmp_path, name, override):
    out = tmp_path / "run"
    code = main(
        [
            "unlearn",
            "--preset",
            "vision/ga",
            override,
            "train.epochs=1",
            "method.epochs=1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    receipt = json.loads((out / "receipt.json").read_text())
    sd = load_file(str(out / "model.safetensors"))
    assert any(k.endswith("num_batches_tracked") for k in sd)
    assert receipt["weights_after_sha256"] == state_dict_sha256(sd)
    assert receipt["weights_before_sha256"] != receipt["weights_after_sha256"]
    # the saved weights load back into a fresh model of the same architecture, bit for bit
    model = load_weights(get_model(name)((1, 8, 8), 10), out / "model.safetensors")
    assert weights_sha256(model) == receipt["weights_after_sha256"]


class SignalNet(nn.Module):
    """A user's 1-D CNN with BatchNorm (the kind of model the library has never seen)."""

    def __init__(self, k: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 8, 5, padding=2)
        self.bn = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, k)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).mean(-1))


def _signals(n_per_class: int, seed: int, k: int = 4):
    """Noisy sines, one frequency per class, shape [N, 1, 32]."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, 32)
    y = torch.arange(k).repeat_interleave(n_per_class)
    phase = torch.rand(len(y), 1, generator=g) * 6.28
    x = torch.sin(6.28 * (y[:, None] + 1) * t + phase) + 0.3 * torch.randn(len(y), 32, generator=g)
    return x.unsqueeze(1), y


def _trained_signal_net():
    torch.manual_seed(0)
    model = SignalNet()
    x, y = _signals(30, 0)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    model.train()
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x, y


@pytest.fixture(scope="module")
def signal_world():
    model, x, y = _trained_signal_net()
    xt, yt = _signals(15, 1)
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.9  # a real original to unlearn from
    return model, x, y, xt, yt


@pytest.mark.parametrize(("method", "lr"), [("ga", 0.05), ("rl", 0.05), ("salun", 0.2)])
def test_api_unlearns_a_user_batchnorm_module(tmp_path, signal_world, method, lr):
    model, x, y, xt, yt = signal_world
    forget = y == 3
    before_sd = {k: v.clone() for k, v in model.state_dict().items()}
    res = unlearnkit.unlearn(
        model,
        method=method,
        forget=(x[forget], y[forget]),
        retain=(x[~forget], y[~forget]),
        test=(xt, yt),
        lr=lr,
        epochs=5,
        batch_size=16,
        out=tmp_path / "run",
    )
    # the user's model, buffers included, is untouched
    for k, v in model.state_dict().items():
        assert torch.equal(v, before_sd[k]), k
    # the class is forgotten: the original had it right on nearly every example, now at most half
    assert res.metrics["UA"] > 50.0
    # the receipt names exactly the saved weights
    sd = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert res.receipt["weights_after_sha256"] == state_dict_sha256(sd) == weights_sha256(res.model)
    # train mode: running statistics and the batch counter moved with the unlearning batches
    after = res.model.state_dict()
    assert int(after["bn.num_batches_tracked"]) > int(before_sd["bn.num_batches_tracked"])
    assert not torch.allclose(after["bn.running_mean"], before_sd["bn.running_mean"])


def test_iu_leaves_running_statistics_alone(signal_world):
    """IU is one influence step computed in eval mode: weights move, BatchNorm buffers do not."""
    model, x, y, xt, yt = signal_world
    forget = y == 3
    res = unlearnkit.unlearn(
        model,
        method="iu",
        forget=(x[forget], y[forget]),
        retain=(x[~forget], y[~forget]),
        test=(xt, yt),
        evaluate=False,
    )
    after, before = res.model.state_dict(), model.state_dict()
    assert torch.equal(after["bn.running_mean"], before["bn.running_mean"])
    assert torch.equal(after["bn.num_batches_tracked"], before["bn.num_batches_tracked"])
    assert not torch.equal(after["conv.weight"], before["conv.weight"])


def test_api_resnet18_from_the_registry(tmp_path):
    """The SalUn paper's own architecture, built by us, handed to the API as a user module."""
    from unlearnkit.data.digits import load_digits

    data = load_digits()
    train = data.train.take(torch.arange(200))
    x, y = train.columns["x"], train.columns["y"]
    torch.manual_seed(0)
    model = get_model("resnet18")((1, 8, 8), 10)
    forget = torch.arange(200) < 20
    res = unlearnkit.unlearn(
        model,
        method="ga",
        forget=(x[forget], y[forget]),
        retain=(x[~forget], y[~forget]),
        test=(data.test.columns["x"][:100], data.test.columns["y"][:100]),
        lr=0.01,
        epochs=1,
        batch_size=32,
        out=tmp_path / "run",
    )
    assert res.receipt["weights_before_sha256"] == weights_sha256(model)
    assert res.receipt["weights_after_sha256"] == state_dict_sha256(
        load_file(str(tmp_path / "run" / "model.safetensors"))
    )
    assert res.receipt["weights_after_sha256"] != res.receipt["weights_before_sha256"]
