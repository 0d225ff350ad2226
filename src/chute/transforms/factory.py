"""One factory for per-sample image pipelines, torchvision.transforms.v2 or albumentations.

Pipelines take and return ``uint8`` ``(C, H, W)`` tensors: the CPU never converts to float.
Normalization and dtype conversion happen once per batch on the device (see ``chute.transforms.batch``).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2

from chute.errors import ConfigError, UnknownArgumentError
from chute.transforms.fused import CenterCropDecode, RandomResizedCropDecode
from chute.transforms.settings import BACKENDS, TransformSettings

log = logging.getLogger(__name__)


class Pipeline:
    """A per-sample pipeline of named steps that maps a ``uint8`` ``(C, H, W)`` tensor to another.

    Wraps a torchvision v2 or albumentations pipeline so both look the same to DataModules:
    callable on tensors, ``steps`` for inspection (the determinism check names the random step),
    and ``reseed`` for the generators albumentations keeps apart from torch's.

    Args:
        steps: torchvision v2 transforms, or albumentations transforms.
        backend: Which library ``steps`` come from.
        seed: Initial seed of albumentations' generators.
    """

    def __init__(self, steps: Sequence[Callable[..., Any]], backend: str = "torchvision", seed: int = 0) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r}: must be one of {list(BACKENDS)}")
        self.backend = backend
        self._steps = list(steps)
        if backend == "torchvision":
            self._compose: Any = v2.Compose(self._steps)
        else:
            import albumentations as A

            self._compose = A.Compose(self._steps, seed=seed)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.backend == "torchvision":
            return self._compose(image)
        return _from_numpy(self._compose(image=_to_numpy(image))["image"])

    @property
    def steps(self) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
        """``(repr, tensor -> tensor)`` for each step, in order."""
        if self.backend == "torchvision":
            return [(repr(s), s) for s in self._steps]
        # albumentations' repr names every argument: the evaluation cache is keyed by it
        return [(repr(s), _AlbumentationsStep(s)) for s in self._compose.transforms]

    def reseed(self, seed: int) -> None:
        """Reseed the pipeline's own generators (torchvision uses torch's global generator)."""
        if self.backend == "albumentations":
            self._compose.set_random_seed(seed)

    def __repr__(self) -> str:
        inner = ",\n".join(f"    {name}" for name, _ in self.steps)
        return f"Pipeline(backend={self.backend!r}, steps=[\n{inner}\n])"


class _AlbumentationsStep:
    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return _from_numpy(self.transform(image=_to_numpy(image))["image"])


def _to_numpy(image: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(image.permute(1, 2, 0).numpy())


def _from_numpy(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    """An albumentations result (``(H, W[, C])`` array) as a ``(C, H, W)`` tensor; a tensor is one
    already (a pipeline ending in ``ToTensorV2``, which returns ``(C, H, W)``)."""
    if isinstance(array, torch.Tensor):
        return array if array.ndim == 3 else array[None]
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


@dataclass(frozen=True)
class Transforms:
    """The train (stochastic) and eval (deterministic) pipelines of one experiment.

    ``train_batch`` is the same training crop and flip done for a whole float batch on its device
    (:class:`~chute.transforms.device.RandomResizedCropBatch`), for DataModules that read
    precomputed images (``device_augment``). ``mixup_alpha``/``cutmix_alpha`` are the batch mixing
    the settings asked for. An image DataModule takes the whole object as ``transforms=``.
    """

    train: Pipeline | RandomResizedCropDecode
    val: Pipeline | CenterCropDecode
    train_batch: Any = None
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    #: The settings (``"rotation=15.0"``) that ``train`` applies and ``train_batch`` does not: it
    #: crops, resizes (bilinear) and flips horizontally only. A DataModule asked to augment training
    #: batches with ``train_batch`` (``device_augment``) refuses them rather than drop them.
    batch_omits: tuple[str, ...] = ()
    #: The :class:`~chute.transforms.settings.TransformSettings` these were built from (kept in an
    #: image DataModule's hyperparameters, so that one restored from a checkpoint builds them again).
    settings: TransformSettings | None = None


def check_batch_augment(transforms: Transforms) -> None:
    """Refuse to augment training batches with ``transforms.train_batch`` (``device_augment``) when
    the settings asked for augmentations it does not do (:attr:`Transforms.batch_omits`), rather
    than leave them out without a word."""
    settings = transforms.settings
    if settings is not None and settings.backend != "torchvision":
        log.warning(
            "device_augment: training batches are cropped and flipped on the device by chute's batch transform, "
            "so transforms.backend=%s builds the evaluation pipeline only; set device_augment=false (data."
            "device_augment) to crop each training image with it.", settings.backend,
        )  # fmt: skip
    if transforms.batch_omits:
        omitted = ", ".join(f"transforms.{setting}" for setting in transforms.batch_omits)
        raise ConfigError(
            "device_augment", True,
            f"augments training batches on the device with a random resized crop (bilinear) and a horizontal "
            f"flip only, so {omitted} would not be applied: set it to false to apply them to each image as it "
            "is read, or leave them at their defaults",
        )  # fmt: skip


def create_transforms(settings: TransformSettings | None = None, **overrides: Any) -> Transforms:
    """Build the train and eval pipelines described by ``settings`` (or keyword arguments).

    Instantiable from a config: ``{_target_: chute.transforms.create_transforms, image_size: 128}``
    given as an image DataModule's ``transforms`` (in chute's ``train.py`` or any Hydra app).

    Example:
        >>> t = create_transforms(image_size=32, crop_pct=1.0)
        >>> t.val(torch.zeros(3, 48, 64, dtype=torch.uint8)).shape
        torch.Size([3, 32, 32])
    """
    if settings is None:
        known = [f.name for f in dataclasses.fields(TransformSettings)]
        for key, value in overrides.items():
            if key not in known:  # Python's own error named TransformSettings.__init__ and no alternative
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"did you mean {close[0]}?" if close else f"it takes {', '.join(known)}"
                raise UnknownArgumentError(key, value, f"is not a transforms setting: {hint}")
        settings = TransformSettings(**overrides)
    elif overrides:
        raise TypeError("pass either a TransformSettings or keyword arguments, not both")
    from chute.transforms.device import RandomResizedCropBatch

    train_batch = RandomResizedCropBatch(settings.image_size, settings.scale, settings.ratio, settings.hflip)
    plain = TransformSettings()
    omits = tuple(
        f"{key}={getattr(settings, key)!r}"
        for key in ("vflip", "rotation", "color_jitter", "interpolation")
        if getattr(settings, key) != getattr(plain, key)
    )
    mixing: dict[str, Any] = {
        "mixup_alpha": float(settings.mixup_alpha), "cutmix_alpha": float(settings.cutmix_alpha), "batch_omits": omits,
        "settings": settings,
    }  # fmt: skip
    if settings.fusable:
        return Transforms(
            train=RandomResizedCropDecode(settings.image_size, settings.scale, settings.ratio, settings.hflip),
            val=CenterCropDecode(settings.image_size, settings.eval_resize),
            train_batch=train_batch,
            **mixing,
        )
    build = _torchvision_steps if settings.backend == "torchvision" else _albumentations_steps
    return Transforms(
        train=Pipeline(build(settings, train=True), settings.backend),
        val=Pipeline(build(settings, train=False), settings.backend),
        train_batch=train_batch,
        **mixing,
    )


def _torchvision_steps(s: TransformSettings, train: bool) -> list[Any]:
    mode = {
        "nearest": v2.InterpolationMode.NEAREST,
        "bilinear": v2.InterpolationMode.BILINEAR,
        "bicubic": v2.InterpolationMode.BICUBIC,
    }[s.interpolation]
    if not train:
        return [v2.Resize(s.eval_resize, interpolation=mode, antialias=True), v2.CenterCrop(s.image_size)]
    steps: list[Any] = [
        v2.RandomResizedCrop(
            s.image_size, scale=tuple(s.scale), ratio=tuple(s.ratio), interpolation=mode, antialias=True
        )
    ]
    if s.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(s.hflip))
    if s.vflip > 0:
        steps.append(v2.RandomVerticalFlip(s.vflip))
    if s.rotation > 0:
        # torchvision rotates a tensor with nearest or bilinear sampling only (bicubic raises at the first image)
        rotate = v2.InterpolationMode.NEAREST if s.interpolation == "nearest" else v2.InterpolationMode.BILINEAR
        steps.append(v2.RandomRotation(s.rotation, interpolation=rotate))
    if s.color_jitter > 0:
        steps.append(v2.ColorJitter(brightness=s.color_jitter, contrast=s.color_jitter, saturation=s.color_jitter))
    return steps


def _albumentations_steps(s: TransformSettings, train: bool) -> list[Any]:
    import albumentations as A
    import cv2

    mode = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}[s.interpolation]
    size = (s.image_size, s.image_size)
    if not train:
        return [A.SmallestMaxSize(max_size=s.eval_resize, interpolation=mode), A.CenterCrop(*size)]
    steps: list[Any] = [A.RandomResizedCrop(size=size, scale=tuple(s.scale), ratio=tuple(s.ratio), interpolation=mode)]
    if s.hflip > 0:
        steps.append(A.HorizontalFlip(p=s.hflip))
    if s.vflip > 0:
        steps.append(A.VerticalFlip(p=s.vflip))
    if s.rotation > 0:
        steps.append(A.Rotate(limit=s.rotation, interpolation=mode, border_mode=cv2.BORDER_CONSTANT, p=1.0))
    if s.color_jitter > 0:
        j = s.color_jitter
        steps.append(A.ColorJitter(brightness=j, contrast=j, saturation=j, hue=0.0, p=1.0))
    return steps
