"""Per-sample augmentation done for a whole batch on its device: random resized crop and flip.

With a precomputed cache the CPU only gathers ``uint8`` images; the crop-and-resize that
``RandomResizedCrop`` would do per sample on the CPU runs here, once per batch, on the GPU where
there is one (or vectorized on the CPU otherwise), with the same semantics: a random area share in
``scale`` and aspect ratio in ``ratio``, bilinear resampling to ``size``, then a random flip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.nn import functional as F

from chute.loader.buffers import batch_buffer
from chute.loader.seeding import batch_generator


class RandomResizedCropBatch:
    """Random resized crop + horizontal flip of every image in a float ``(N, C, H, W)`` batch.

    Args:
        size: Output side (square) or ``(height, width)``.
        scale: Range of the crop's share of the image area.
        ratio: Range of the crop's aspect ratio (width / height), sampled log-uniformly.
        hflip: Probability of a horizontal flip.
        generator: Optional CPU generator for the random parameters. Default: the generator of the
            batch being loaded when this runs inside a chute loader (``chute.loader.batch_generator``,
            keyed by the batch's samples: reproducible with workers, threads or none), else torch's
            global one, which Lightning's ``seed_everything`` seeds.

    Example:
        >>> crop = RandomResizedCropBatch(8, scale=(0.5, 1.0))
        >>> crop(torch.rand(4, 3, 32, 32)).shape
        torch.Size([4, 3, 8, 8])
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        generator: torch.Generator | None = None,
    ) -> None:
        self.size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale={list(scale)}: need 0 < low <= high <= 1")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio={list(ratio)}: need 0 < low <= high")
        if not 0 <= hflip <= 1:
            raise ValueError(f"hflip={hflip}: a probability in [0, 1]")
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.hflip = hflip
        self.generator = generator

    def _generator(self) -> torch.Generator | None:
        return self.generator if self.generator is not None else batch_generator()

    def boxes(self, n: int, height: int, width: int) -> torch.Tensor:
        """``(n, 4)`` crop boxes ``x0, y0, x1, y1``; like torchvision, 10 tries then a center crop."""
        g = self._generator()
        area = height * width * torch.empty(n, 10).uniform_(*self.scale, generator=g)
        log_ratio = torch.empty(n, 10).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]), generator=g)
        ratio = torch.exp(log_ratio)
        w = torch.sqrt(area * ratio).round()
        h = torch.sqrt(area / ratio).round()
        ok = (w >= 1) & (h >= 1) & (w <= width) & (h <= height)
        pick = ok.to(torch.int8).argmax(dim=1)
        rows = torch.arange(n)
        w, h = w[rows, pick], h[rows, pick]
        # Fallback (no valid try): the whole image cropped to the nearest allowed aspect ratio.
        fw = torch.full((n,), float(width))
        fh = torch.full((n,), float(height))
        aspect = width / height
        if aspect < self.ratio[0]:
            fh = torch.full((n,), float(round(width / self.ratio[0])))
        elif aspect > self.ratio[1]:
            fw = torch.full((n,), float(round(height * self.ratio[1])))
        valid = ok.any(dim=1)
        w, h = torch.where(valid, w, fw), torch.where(valid, h, fh)
        x0 = torch.floor(torch.rand(n, generator=g) * (width - w + 1))
        y0 = torch.floor(torch.rand(n, generator=g) * (height - h + 1))
        x0 = torch.where(valid, x0, ((width - w) / 2).floor())
        y0 = torch.where(valid, y0, ((height - h) / 2).floor())
        return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)

    #: Takes ``uint8`` batches on the CPU too (see ``__call__``): a CPU loader crops before normalizing.
    takes_uint8 = True

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Crop, resize and flip ``images``: a float batch on any device, or a ``uint8`` batch on the
        CPU, which OpenCV resizes image by image (the same boxes; ``uint8`` out, channels-last)."""
        if images.ndim != 4 or not (images.is_floating_point() or images.dtype == torch.uint8):
            raise ValueError(f"expected a float or uint8 (N, C, H, W) batch, got {images.dtype} {tuple(images.shape)}")
        if images.dtype == torch.uint8 and images.device.type != "cpu":
            raise ValueError("a uint8 batch is cropped on the CPU only; normalize it to floats on the device first")
        n, channels, height, width = images.shape
        boxes = self.boxes(n, height, width)
        flips = torch.rand(n, generator=self._generator()) < self.hflip
        if images.dtype == torch.uint8:
            return _crop_uint8(images, boxes, flips, self.size)
        # One affine sampling grid per image maps the output square onto its box (a flip negates
        # the x scale, for free); grid_sample resamples bilinearly, vectorized over the batch.
        theta = torch.zeros(n, 2, 3, dtype=torch.float32)
        theta[:, 0, 0] = (boxes[:, 2] - boxes[:, 0]) / width * torch.where(flips, -1.0, 1.0)
        theta[:, 0, 2] = (boxes[:, 0] + boxes[:, 2]) / width - 1
        theta[:, 1, 1] = (boxes[:, 3] - boxes[:, 1]) / height
        theta[:, 1, 2] = (boxes[:, 1] + boxes[:, 3]) / height - 1
        theta = theta.to(images.device, images.dtype)
        grid = F.affine_grid(theta, [n, channels, *self.size], align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def __repr__(self) -> str:
        return f"RandomResizedCropBatch(size={self.size}, scale={self.scale}, ratio={self.ratio}, hflip={self.hflip})"


def _crop_uint8(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each image's box resized (bilinear, OpenCV) into one channels-last ``uint8`` batch, flipped as drawn."""
    import cv2

    pixels = images.permute(0, 2, 3, 1).numpy()  # (N, H, W, C): a view, contiguous for channels-last input
    out = batch_buffer((len(images), size[0], size[1], images.shape[1]))
    target = out.numpy()
    if target.shape[3] == 1:  # OpenCV takes one channel as a 2-D array
        pixels, target = pixels[..., 0], target[..., 0]
    for k, ((x0, y0, x1, y1), flip) in enumerate(zip(boxes.to(torch.int64).tolist(), flips.tolist(), strict=True)):
        cv2.resize(pixels[k, y0:y1, x0:x1], (size[1], size[0]), dst=target[k], interpolation=cv2.INTER_LINEAR)
        if flip:
            cv2.flip(target[k], 1, dst=target[k])
    return out.permute(0, 3, 1, 2)


class MixBatch:
    """MixUp and/or CutMix (torchvision v2) for a training batch of ``(images, labels)`` on its device.

    Labels become class probabilities (soft targets), which chute's models take directly. With
    both alphas set, each batch gets one of the two at random.

    Args:
        num_classes: Number of classes (for the one-hot targets).
        mixup_alpha: MixUp's Beta(alpha, alpha) (0: off).
        cutmix_alpha: CutMix's alpha (0: off).

    Example:
        >>> mix = MixBatch(num_classes=3, mixup_alpha=0.4)
        >>> images, targets = mix(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))
        >>> targets.shape, bool(torch.allclose(targets.sum(dim=1), torch.ones(4)))
        (torch.Size([4, 3]), True)
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0) -> None:
        from torchvision.transforms import v2

        if mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError("MixBatch needs mixup_alpha > 0 or cutmix_alpha > 0")
        options: list[Any] = []
        if mixup_alpha > 0:
            options.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            options.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        self.mix = options[0] if len(options) == 1 else v2.RandomChoice(options)
        self.num_classes, self.mixup_alpha, self.cutmix_alpha = num_classes, mixup_alpha, cutmix_alpha

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if labels.is_floating_point():  # already soft
            return images, labels
        mixed, soft = self.mix(images, labels)
        return mixed, soft

    def __repr__(self) -> str:
        alphas = f"mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}"
        return f"MixBatch(num_classes={self.num_classes}, {alphas})"
