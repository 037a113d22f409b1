"""Model builders: shapes and the parameter counts of the published architectures."""

import torch

from unlearnkit.models.cnn import build_cnn
from unlearnkit.models.mlp import build_mlp
from unlearnkit.models.resnet import build_resnet18, build_resnet_tiny


def _count(m):
    return sum(p.numel() for p in m.parameters())


def test_cifar_resnet18_matches_the_standard_architecture():
    m = build_resnet18((3, 32, 32), 10)
    # CIFAR ResNet-18 (3x3 stem, no max-pool, 64-128-256-512, two BasicBlocks per stage): 11,173,962.
    assert _count(m) == 11_173_962
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_small_models_fit_digits_shapes():
    x = torch.zeros(4, 1, 8, 8)
    for build in (build_resnet_tiny, build_cnn, build_mlp):
        assert build((1, 8, 8), 10)(x).shape == (4, 10)
    # MLP: 64*128+128 + 128*128+128 + 128*10+10
    assert _count(build_mlp((1, 8, 8), 10)) == 64 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10
