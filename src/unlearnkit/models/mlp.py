"""A multilayer perceptron on flattened images (a weaker inductive bias than a CNN)."""

from __future__ import annotations

import math

from torch import nn

from unlearnkit.errors import ConfigError
from unlearnkit.registry import register_model


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: int = 128, depth: int = 2) -> None:
        super().__init__()
        if hidden < 1 or depth < 0:  # depth 0 is a linear classifier
            raise ConfigError(
                f"model 'mlp' needs hidden >= 1 and depth >= 0, got hidden={hidden}, depth={depth}"
            )
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))


@register_model("mlp")
def build_mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 128, depth: int = 2) -> nn.Module:
    return MLP(math.prod(input_shape), num_classes, hidden, depth)
