"""Small deterministic steps used around caches: square resize, and applying a transform to one field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torchvision.transforms.v2 import functional as F


class SquareResize:
    """Resize the short side to ``size`` (antialiased) and center-crop to ``size x size``; ``uint8`` stays ``uint8``.

    The deterministic stage before a cache: images of any size become one fixed shape, and the
    random crop of the training pipeline then runs on the cached square.

    Example:
        >>> SquareResize(4)(torch.zeros(3, 10, 20, dtype=torch.uint8)).shape
        torch.Size([3, 4, 4])
    """

    def __init__(self, size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size={size!r}: must be a positive integer")
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        image = F.resize(image, [self.size], antialias=True)
        return F.center_crop(image, [self.size, self.size])

    def __repr__(self) -> str:
        return f"SquareResize({self.size})"


class OnFirst:
    """Apply ``transform`` to the first element of a ``(input, target, ...)`` sample (picklable, unlike a lambda)."""

    def __init__(self, transform: Callable[[Any], Any]) -> None:
        self.transform = transform

    def __call__(self, sample: tuple[Any, ...]) -> tuple[Any, ...]:
        return (self.transform(sample[0]), *sample[1:])

    def reseed(self, seed: int) -> None:
        reseed = getattr(self.transform, "reseed", None)
        if callable(reseed):
            reseed(seed)

    def __repr__(self) -> str:
        return f"OnFirst({self.transform!r})"
