"""A small convolutional classifier for low-resolution images."""

from __future__ import annotations

from torch import nn

from unlearnkit.errors import ConfigError
from unlearnkit.registry import register_model


class SmallCNN(nn.Module):
    """Two 3×3 conv blocks with batch norm, global average pooling and a linear head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        if width < 1:
            raise ConfigError(f"model 'cnn' needs width >= 1, got {width}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


@register_model("cnn")
def build_cnn(input_shape: tuple[int, ...], num_classes: int, width: int = 32) -> nn.Module:
    return SmallCNN(input_shape[0], num_classes, width)
