"""Small backbones, created by name so model hyperparameters stay plain values in checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn


class SmallCNN(nn.Sequential):
    """Conv-BN-ReLU blocks, each halving the resolution, then global average pooling and a linear head.

    Args:
        in_channels: Input channels.
        num_classes: Output logits.
        widths: Channels of each block; the input shrinks by 2 per block but never below 1x1.
        dropout: Dropout before the head.
    """

    def __init__(
        self, in_channels: int, num_classes: int, widths: Sequence[int] = (32, 64, 128), dropout: float = 0.1
    ) -> None:
        layers: list[nn.Module] = []
        c = in_channels
        for width in widths:
            layers += [
                nn.Conv2d(c, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            c = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c, num_classes)]
        super().__init__(*layers)


def _resnet18(in_channels: int, num_classes: int, small_input: bool = True) -> nn.Module:
    """torchvision's ResNet-18, randomly initialised (no weights are downloaded).

    ``small_input`` swaps the 7x7/2 stem and max-pool for a 3x3/1 conv, as for CIFAR-sized images.
    """
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    if small_input:
        model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    return model


BACKBONES: dict[str, Callable[..., nn.Module]] = {"small_cnn": SmallCNN, "resnet18": _resnet18}


def create_backbone(name: str, in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """Instantiate the backbone registered as ``name``; unknown names list the known ones."""
    try:
        factory = BACKBONES[name]
    except KeyError:
        raise ValueError(f"backbone={name!r} is unknown; available: {sorted(BACKBONES)}") from None
    return factory(in_channels=in_channels, num_classes=num_classes, **kwargs)
