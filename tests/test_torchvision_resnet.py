"""A state dict with torchvision's ResNet-18 key names and shapes loads into our ``resnet18``.

torchvision is not importable here, so the file is written by hand from torchvision's architecture
(``torchvision/models/resnet.py``: a 7×7 stride-2 ``conv1``, ``bn1``, a 3×3 stride-2 max-pool, ``layer1`` ..
``layer4`` of two BasicBlocks, ``downsample.0``/``.1`` on the first block of stages 2-4, ``fc``), every
tensor random (BatchNorm statistics too), and our model's output is compared with a functional forward pass
that reads the file's tensors by torchvision's names."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from unlearnkit.cli import main
from unlearnkit.errors import UnlearnkitError
from unlearnkit.io import load_weights, weights_sha256
from unlearnkit.models.resnet import build_resnet18, build_resnet_tiny

WIDTHS = (64, 128, 256, 512)


def _bn(sd, name, c, gen):
    sd[f"{name}.weight"] = torch.rand(c, generator=gen) + 0.5
    sd[f"{name}.bias"] = torch.randn(c, generator=gen) * 0.1
    sd[f"{name}.running_mean"] = torch.randn(c, generator=gen) * 0.1
    sd[f"{name}.running_var"] = torch.rand(c, generator=gen) + 0.5
    sd[f"{name}.num_batches_tracked"] = torch.tensor(7)


def torchvision_state_dict(classes=10, in_ch=3, stem=7, widths=WIDTHS, blocks=(2, 2, 2, 2), seed=0):
    gen = torch.Generator().manual_seed(seed)
    sd = {"conv1.weight": torch.randn(widths[0], in_ch, stem, stem, generator=gen) * 0.1}
    _bn(sd, "bn1", widths[0], gen)
    cin = widths[0]
    for s, (w, n) in enumerate(zip(widths, blocks, strict=True), start=1):
        for b in range(n):
            p = f"layer{s}.{b}"
            sd[f"{p}.conv1.weight"] = torch.randn(w, cin, 3, 3, generator=gen) * (2 / (9 * cin)) ** 0.5
            _bn(sd, f"{p}.bn1", w, gen)
            sd[f"{p}.conv2.weight"] = torch.randn(w, w, 3, 3, generator=gen) * (2 / (9 * w)) ** 0.5
            _bn(sd, f"{p}.bn2", w, gen)
            if b == 0 and (s > 1 or cin != w):
                sd[f"{p}.downsample.0.weight"] = torch.randn(w, cin, 1, 1, generator=gen) * (1 / cin) ** 0.5
                _bn(sd, f"{p}.downsample.1", w, gen)
            cin = w
    sd["fc.weight"] = torch.randn(classes, cin, generator=gen) * 0.1
    sd["fc.bias"] = torch.randn(classes, generator=gen) * 0.1
    return sd


def reference_forward(sd, x, stem=7, stages=4):
    """torchvision's ResNet forward (eval mode), read straight from the file's tensors."""

    def bn(t, n):
        return F.batch_norm(
            t, sd[f"{n}.running_mean"], sd[f"{n}.running_var"], sd[f"{n}.weight"], sd[f"{n}.bias"], False
        )

    if stem == 7:
        x = F.max_pool2d(F.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), "bn1")), 3, 2, 1)
    else:
        x = F.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=1, padding=1), "bn1"))
    for s in range(1, stages + 1):
        b = 0
        while f"layer{s}.{b}.conv1.weight" in sd:
            p = f"layer{s}.{b}"
            stride = 2 if (s > 1 and b == 0) else 1
            out = F.relu(bn(F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
            out = bn(F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            short = x
            if f"{p}.downsample.0.weight" in sd:
                short = bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
            x = F.relu(out + short)
            b += 1
    return F.linear(x.mean((2, 3)), sd["fc.weight"], sd["fc.bias"])


@pytest.mark.parametrize("stem", [7, 3])
def test_torchvision_weights_land_where_they_belong(tmp_path, stem):
    sd = torchvision_state_dict(stem=stem)
    assert len(sd) == 122 and "layer2.0.downsample.1.running_var" in sd  # torchvision's resnet18 has 122
    path = tmp_path / "r18.safetensors"
    save_file(sd, str(path))
    model = build_resnet18((3, 32, 32), 10, stem="imagenet" if stem == 7 else "cifar")
    load_weights(model, path)
    ours = model.state_dict()
    assert torch.equal(ours["layers.1.0.shortcut.0.weight"], sd["layer2.0.downsample.0.weight"])
    assert torch.equal(ours["layers.3.1.bn2.running_var"], sd["layer4.1.bn2.running_var"])
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), reference_forward(sd, x, stem), atol=1e-5, rtol=1e-4)


def test_a_mismatch_names_the_first_key_and_the_fix(tmp_path):
    path = tmp_path / "r18.safetensors"
    save_file(torchvision_state_dict(stem=7), str(path))
    with pytest.raises(UnlearnkitError, match=r"conv1\.weight is \(64, 3, 7, 7\).*model\.stem=imagenet"):
        load_weights(build_resnet18((3, 32, 32), 10), path)
    with pytest.raises(UnlearnkitError, match=r"fc\.weight is \(10, 512\) in the file, \(100, 512\)"):
        load_weights(build_resnet18((3, 32, 32), 100, stem="imagenet"), path)


def test_nan_under_torchvision_names_is_named_a_broken_model_file(tmp_path):
    sd = torchvision_state_dict()
    sd["layer2.0.downsample.0.weight"][0, 0, 0, 0] = float("nan")  # a key our model names otherwise
    path = tmp_path / "r18.safetensors"
    save_file(sd, str(path))
    with pytest.raises(
        UnlearnkitError, match=r"NaN or infinite values in 1 tensor\(s\) \(layer2.0.downsample"
    ):
        load_weights(build_resnet18((3, 32, 32), 10, stem="imagenet"), path)


def test_the_cli_loads_torchvision_names_and_refuses_pickles(tmp_path, capsys):
    sd = torchvision_state_dict(in_ch=1, stem=3, widths=(16, 32, 64), blocks=(1, 1, 1))
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "tiny.safetensors"
    save_file(sd, str(path))
    ours = build_resnet_tiny((1, 8, 8), 10)
    load_weights(ours, path)
    args = ["unlearn", "--preset", "vision/ga", "method.epochs=1", "eval.oracle=false"]
    out = tmp_path / "run"
    assert main([*args, f"model={{name: resnet-tiny, path: {path}}}", "--out", str(out)]) == 0
    receipt = json.loads((out / "receipt.json").read_text())
    assert receipt["weights_before_sha256"] == weights_sha256(ours)  # the file's weights were the original
    pth = tmp_path / "in" / "tiny.pth"
    torch.save(sd, pth)
    capsys.readouterr()
    assert main([*args, f"model={{name: resnet-tiny, path: {pth}}}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pickled" in err and "save_file(torch.load(" in err


def test_a_pickle_under_a_safetensors_name_is_refused_without_suggesting_to_overwrite_it(tmp_path):
    path = tmp_path / "r18.safetensors"
    torch.save(torchvision_state_dict(stem=3, widths=(16, 32, 64), blocks=(1, 1, 1)), path)
    with pytest.raises(UnlearnkitError, match=r"pickled.*'r18\.converted\.safetensors'"):
        load_weights(build_resnet_tiny((3, 8, 8), 10), path)
