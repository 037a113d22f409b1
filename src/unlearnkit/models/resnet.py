"""CIFAR-style ResNets (He et al., 2016) written here so the core needs no torchvision.

``resnet18`` is the architecture of the SalUn / Unlearn-Sparse CIFAR experiments: a 3×3 stride-1 stem
without max-pooling, four stages of two BasicBlocks (64-128-256-512), global average pooling and a
linear head ``fc``. ``resnet-tiny`` keeps the same design at demo scale (three stages of one block,
widths 16-32-64, about 78k parameters for digits).

``stem="imagenet"`` gives torchvision's ImageNet stem instead (a 7×7 stride-2 conv and a 3×3 stride-2
max-pool), so ``resnet18`` with it is torchvision's ``resnet18``. Weights saved from torchvision (its key
names: ``layer1.0.conv1.weight``, ``layer2.0.downsample.0.weight``, ...) load into either stem as they
are (``models/torchvision_keys.py``): ``model: {name: resnet18, stem: imagenet, path: r18.safetensors}``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import nn

from unlearnkit.errors import ConfigError
from unlearnkit.models.torchvision_keys import rename_torchvision_keys
from unlearnkit.registry import register_model

STEMS = ("cifar", "imagenet")


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        widths: Sequence[int] = (64, 128, 256, 512),
        blocks: Sequence[int] = (2, 2, 2, 2),
        stem: str = "cifar",
    ) -> None:
        super().__init__()
        if len(widths) != len(blocks):
            raise ValueError("widths and blocks must have the same length")
        if stem not in STEMS:
            raise ConfigError(f"model.stem must be one of {STEMS}, got {stem!r}")
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, cin = [], widths[0]
        for i, (w, b) in enumerate(zip(widths, blocks, strict=True)):
            stage = []
            for j in range(b):
                stage.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
            layers.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        self.register_load_state_dict_pre_hook(rename_torchvision_keys)

    def forward(self, x):
        out = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        out = self.pool(self.layers(out)).flatten(1)
        return self.fc(out)


@register_model("resnet18")
def build_resnet18(input_shape: tuple[int, ...], num_classes: int, stem: str = "cifar") -> nn.Module:
    return ResNet(input_shape[0], num_classes, (64, 128, 256, 512), (2, 2, 2, 2), stem)


@register_model("resnet-tiny")
def build_resnet_tiny(input_shape: tuple[int, ...], num_classes: int, stem: str = "cifar") -> nn.Module:
    return ResNet(input_shape[0], num_classes, (16, 32, 64), (1, 1, 1), stem)
