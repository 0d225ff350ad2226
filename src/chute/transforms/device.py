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

import numpy as np
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
        """``(n, 4)`` crop boxes ``x0, y0, x1, y1``; like torchvision, 10 tries then a center crop.

        The draws come from torch's generator; the arithmetic on these few hundred numbers runs in
        NumPy (float32, the same IEEE operations), about ten times cheaper than torch's per-call
        overhead on tiny tensors: this runs once per batch, between training steps on a GPU.
        """
        g = self._generator()
        share = torch.empty(n, 10).uniform_(*self.scale, generator=g).numpy()
        log_ratio = torch.empty(n, 10).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]), generator=g)
        ratio = torch.exp(log_ratio).numpy()  # torch's exp, so the draws match earlier releases bit for bit
        at_x, at_y = torch.rand(n, generator=g).numpy(), torch.rand(n, generator=g).numpy()
        area = np.float32(height * width) * share
        w = np.sqrt(area * ratio).round()
        h = np.sqrt(area / ratio).round()
        ok = (w >= 1) & (h >= 1) & (w <= width) & (h <= height)
        pick = ok.argmax(axis=1)  # the first try that fits
        rows = np.arange(n)
        w, h = w[rows, pick], h[rows, pick]
        # Fallback (no valid try): the whole image cropped to the nearest allowed aspect ratio.
        fw, fh = float(width), float(height)
        aspect = width / height
        if aspect < self.ratio[0]:
            fh = float(round(width / self.ratio[0]))
        elif aspect > self.ratio[1]:
            fw = float(round(height * self.ratio[1]))
        valid = ok.any(axis=1)
        w = np.where(valid, w, np.float32(fw))
        h = np.where(valid, h, np.float32(fh))
        x0 = np.where(valid, np.floor(at_x * (width - w + 1)), np.floor((width - w) / 2))
        y0 = np.where(valid, np.floor(at_y * (height - h + 1)), np.floor((height - h) / 2))
        return torch.from_numpy(np.stack([x0, y0, x0 + w, y0 + h], axis=1).astype(np.float32, copy=False))

    #: Takes ``uint8`` batches on the CPU too (see ``__call__``): a CPU loader crops before normalizing.
    takes_uint8 = True

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Crop, resize and flip ``images``: a float batch on any device, or a ``uint8`` batch on the
        CPU, which OpenCV resizes image by image (the same boxes; ``uint8`` out, channels-last)."""
        if images.ndim != 4 or not (images.is_floating_point() or images.dtype == torch.uint8):
            raise ValueError(f"expected a float or uint8 (N, C, H, W) batch, got {images.dtype} {tuple(images.shape)}")
        if images.dtype == torch.uint8 and images.device.type != "cpu":
            raise ValueError("a uint8 batch is cropped on the CPU only; normalize it to floats on the device first")
        n, _, height, width = images.shape
        boxes = self.boxes(n, height, width)
        flips = torch.rand(n, generator=self._generator()) < self.hflip
        if images.dtype == torch.uint8:
            return _crop_uint8(images, boxes, flips, self.size)
        # Each output pixel samples its box at a point that depends on its column (x) or its row (y)
        # alone: the sampling grid is two short lines per image, computed here on the CPU, copied in
        # one transfer and broadcast into the grid on the device (what F.affine_grid gives for an
        # axis-aligned box, in three device operations instead of a dozen). A flip negates the x
        # scale, for free. grid_sample resamples bilinearly, vectorized over the batch.
        out_h, out_w = self.size
        x0, y0, x1, y1 = boxes.numpy()[:, :, None].transpose(1, 0, 2)  # each (n, 1)
        sign = np.where(flips.numpy(), np.float32(-1), np.float32(1))[:, None]
        along_x = (x1 - x0) / width * sign * _centres(out_w) + ((x0 + x1) / width - 1)  # (n, out_w)
        along_y = (y1 - y0) / height * _centres(out_h) + ((y0 + y1) / height - 1)  # (n, out_h)
        lines = torch.from_numpy(np.concatenate([along_x, along_y], axis=1).astype(np.float32, copy=False))
        lines = _to_device(lines, images.device).to(images.dtype)
        grid = torch.stack(
            [lines[:, None, :out_w].expand(n, out_h, out_w), lines[:, out_w:, None].expand(n, out_h, out_w)], dim=-1
        )
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def __repr__(self) -> str:
        return f"RandomResizedCropBatch(size={self.size}, scale={self.scale}, ratio={self.ratio}, hflip={self.hflip})"


def _centres(size: int) -> np.ndarray:
    """The ``size`` pixel centres of an output side in grid units (``align_corners=False``): ``(2i + 1) / size - 1``."""
    return (np.arange(size, dtype=np.float32) * 2 + 1) / np.float32(size) - 1


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; a CUDA copy goes from pinned memory without blocking the host."""
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


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
