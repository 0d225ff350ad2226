"""``TransformSettings``: what the train and eval image pipelines do, checked on construction.

Kept apart from :mod:`chute.transforms.factory` and free of torch, so ``train.py`` can check a
composed config before it imports the heavy libraries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from chute.errors import ConfigError, check_bool

BACKENDS = ("torchvision", "albumentations")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass
class TransformSettings:
    """What the train and eval pipelines do; ``create_transforms`` turns it into callables.

    Train: ``RandomResizedCrop(image_size, scale, ratio)``, flips, rotation, colour jitter.
    Eval: resize the short side to ``image_size / crop_pct``, then ``CenterCrop(image_size)``.

    Args:
        backend: ``"torchvision"`` (transforms.v2) or ``"albumentations"``.
        image_size: Side of the square output, in pixels.
        crop_pct: Eval center-crop fraction (1.0 resizes straight to ``image_size``).
        scale: Range of the crop's area, as fractions of the image (RandomResizedCrop).
        ratio: Range of the crop's aspect ratio (RandomResizedCrop).
        hflip: Probability of a horizontal flip.
        vflip: Probability of a vertical flip.
        rotation: Maximum rotation in degrees (0 disables it).
        color_jitter: Brightness, contrast and saturation jitter strength (0 disables it).
        interpolation: ``nearest``, ``bilinear`` or ``bicubic`` (the torchvision backend rotates with
            bilinear sampling for ``bicubic``: it rotates tensors with nearest or bilinear only).
        mixup_alpha: MixUp's Beta(alpha, alpha) for training batches, on the device (0 disables it).
        cutmix_alpha: CutMix's alpha likewise; with both set, each batch gets one of the two.
        fast_decode: With the torchvision backend and a crop + horizontal-flip pipeline (no
            rotation, vertical flip or colour jitter; bilinear), decode JPEGs straight to the crop
            (:mod:`chute.transforms.fused`): same geometry, a fraction of the decoding work.
    """

    backend: str = "torchvision"
    image_size: int = 224
    crop_pct: float = 0.875
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: float = 0.5
    vflip: float = 0.0
    rotation: float = 0.0
    color_jitter: float = 0.0
    interpolation: str = "bilinear"
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    fast_decode: bool = True

    def __post_init__(self) -> None:
        self.scale, self.ratio = [float(v) for v in self.scale], [float(v) for v in self.ratio]  # YAML lists too
        if self.backend not in BACKENDS:
            raise ConfigError("backend", self.backend, f"must be one of {list(BACKENDS)}")
        check_bool("fast_decode", self.fast_decode)
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 1:
            raise ConfigError("image_size", self.image_size, "must be a positive integer (pixels)")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ConfigError("crop_pct", self.crop_pct, "must be in (0, 1]")
        _check_range(self.scale, "scale", low=0.0, high=1.0)
        _check_range(self.ratio, "ratio", low=0.0, high=float("inf"))
        for key in ("hflip", "vflip"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(key, getattr(self, key), "is a probability: must be in [0, 1]")
        if not 0.0 <= self.rotation <= 180.0:
            raise ConfigError("rotation", self.rotation, "must be in [0, 180] degrees")
        if self.color_jitter < 0:
            raise ConfigError("color_jitter", self.color_jitter, "must be >= 0")
        for key in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, key) < 0:
                raise ConfigError(key, getattr(self, key), "must be >= 0 (0 disables it)")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError("interpolation", self.interpolation, f"must be one of {list(INTERPOLATIONS)}")

    @property
    def eval_resize(self) -> int:
        return max(self.image_size, round(self.image_size / self.crop_pct))

    @property
    def fusable(self) -> bool:
        """Whether the pipelines are crop, resize and flip only, so ``fast_decode`` applies."""
        simple = self.rotation == 0 and self.color_jitter == 0 and self.vflip == 0
        return self.fast_decode and self.backend == "torchvision" and simple and self.interpolation == "bilinear"


def _check_range(values: Sequence[float], key: str, low: float, high: float) -> None:
    if len(values) != 2 or not (low < values[0] <= values[1] <= high):
        raise ConfigError(key, list(values), f"must be [min, max] with {low} < min <= max <= {high}")
