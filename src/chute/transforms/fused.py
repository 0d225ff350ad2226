"""Crop-aware JPEG decoding: decode only the pixels a crop keeps, at the smallest DCT scale it allows.

A ``RandomResizedCrop(224)`` of a 500x375 photograph keeps on average about half of it, and a large
crop is then shrunk. Decoding the whole image first and cropping after wastes that work. Here the
crop is chosen from the JPEG header's size, then libjpeg-turbo (``chute._jpegcrop``, a small C
extension) decodes just that region: scaled by N/8 in the IDCT when the crop is at least twice the
output, only the crop's columns, no IDCT for the rows above it and no decoding at all below it.
One bilinear resize (OpenCV) then gives the output size, and the flip costs a copy. Everything
stays ``uint8``; normalization happens per batch on the device.

Both transforms are also ordinary tensor transforms (``uint8`` ``(C, H, W)`` in and out, the same
geometry through torchvision), used for files the fast path does not take (PNG and other formats,
CMYK JPEGs, a missing extension build) and anywhere a decoded image is at hand.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from chute import exif, fastpaths

# Built by `pip install` where a C compiler and libjpeg-turbo's headers exist (chute.fastpaths).
_jpegcrop = fastpaths.jpegcrop

#: Whether the compiled crop decoder is available (else every image takes the generic path).
NATIVE = _jpegcrop is not None

# IDCT scales used: libjpeg-turbo's SIMD IDCTs cover 8/8, 4/8, 2/8 and 1/8. The other N/8 scales
# run its plain-C IDCTs, which measured slower here than decoding at the next power of two.
_SCALES = (1, 2, 4)
_JPEG_MAGIC = b"\xff\xd8\xff"
_EOI = b"\xff\xd9"
_COLORSPACE_CMYK = (4, 5)  # JCS_CMYK, JCS_YCCK: libjpeg cannot convert them to RGB


@dataclass(frozen=True)
class Region:
    """A crop of the source image (pixels), and whether the output is mirrored left-right."""

    x: int
    y: int
    width: int
    height: int
    flip: bool = False


@dataclass(frozen=True)
class StoredRegion:
    """A crop of the *stored* pixels, and how its resized square is turned into the output: first
    transposed (if ``transpose``), then mirrored left-right and top-bottom (the EXIF orientation
    and the augmentation's flip, combined)."""

    x: int
    y: int
    width: int
    height: int
    transpose: bool = False
    mirror: bool = False
    upside_down: bool = False


class CropDecode:
    """Base of the crop-aware transforms: a ``region`` policy, a fast JPEG path and a tensor path.

    Args:
        size: Output side in pixels (square).
    """

    size: int

    def region(self, width: int, height: int, rng: random.Random) -> Region:
        raise NotImplementedError

    def __init__(self, size: int, seed: int = 0) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size={size!r}: must be a positive integer")
        self.size = size
        self._rng = random.Random(seed)

    # -- the tensor path ---------------------------------------------------------------------------

    def __call__(self, image: torch.Tensor, rng: random.Random | None = None) -> torch.Tensor:
        """Crop, resize (bilinear, antialiased) and flip a decoded ``uint8`` ``(C, H, W)`` image."""
        r = self.region(int(image.shape[-1]), int(image.shape[-2]), rng or self._rng)
        out = F.resized_crop(image, r.y, r.x, r.height, r.width, [self.size, self.size], antialias=True)
        return F.horizontal_flip(out) if r.flip else out

    # -- the JPEG path -----------------------------------------------------------------------------

    def decode_into(
        self,
        data: bytes,
        out: np.ndarray,
        gray: bool = False,
        rng: random.Random | None = None,
        size: tuple[int, int] | None = None,
    ) -> bool:
        """Decode JPEG ``data`` straight into ``out`` (``(size, size, C)`` ``uint8``, C-contiguous).

        Returns ``False``, leaving ``out`` untouched, when the fast path does not apply: no compiled
        decoder, not a JPEG, a CMYK JPEG, no end-of-image marker (a truncated file is left to the
        generic decoder, which reports it), or libjpeg refuses the data. The caller then decodes
        the file generically and calls this transform on the tensor.

        ``size``: the image's ``(width, height)`` when the caller has already read the header and
        made these checks (:func:`chute.images.check_image_size` returns it), so they are not repeated.

        An EXIF orientation tag is honoured: the region is drawn in the displayed frame (as the tensor
        path draws it on the turned image), mapped to the stored pixels, decoded, and turned after
        the resize, which is a square, so it costs one more pass over ``size x size`` pixels.
        """
        if _jpegcrop is None:
            return False
        try:
            if size is not None:
                width, height = size
            else:
                if not data.startswith(_JPEG_MAGIC) or not data.rstrip(b"\0").endswith(_EOI):
                    return False
                width, height, _, colorspace = _jpegcrop.header(data)
                if colorspace in _COLORSPACE_CMYK:
                    return False
            cut = self.stored_region(width, height, exif.orientation(data), rng)
            x, y, w, h = cut.x, cut.y, cut.width, cut.height
            num = _dct_scale(w, h, self.size)
            channels = 1 if gray else 3
            scratch = _scratch((h * num // 8 + 16) * (width * num // 8 + 16) * channels)
            rows, row_width, x0 = _jpegcrop.decode_into(data, x, y, w, h, num, gray, scratch)
        except (ValueError, _jpegcrop.DecodeError):
            return False
        cols = min(-(-(x + w) * num // 8) - x * num // 8, row_width - x0)
        decoded = scratch[: rows * row_width * channels].reshape(rows, row_width, channels)[:, x0 : x0 + cols]
        _resize_into(decoded, out, cut.transpose, cut.mirror, cut.upside_down)
        return True

    def stored_region(
        self, width: int, height: int, orientation: int = 1, rng: random.Random | None = None
    ) -> StoredRegion:
        """The region of a stored ``width`` x ``height`` image (before its EXIF ``orientation`` is
        applied) that this transform's next draw keeps, and the turn that gives the output.

        The draw is made in the displayed frame, as the tensor path draws it on the turned image, so
        every decoder (this one, the generic path, the GPU's) cuts the same box for the same ``rng``.
        """
        transpose, left_right, top_bottom = exif.STEPS.get(orientation, exif.STEPS[1])
        shown = (height, width) if transpose else (width, height)
        r = self.region(*shown, rng or self._rng)
        x = shown[0] - r.x - r.width if left_right else r.x  # undo the flips, then the transpose
        y = shown[1] - r.y - r.height if top_bottom else r.y
        x, y, w, h = (y, x, r.height, r.width) if transpose else (x, y, r.width, r.height)
        return StoredRegion(x, y, w, h, transpose, left_right != r.flip, top_bottom)

    def reseed(self, seed: int) -> None:
        """Reseed the generator used when no ``rng`` is passed (each DataLoader worker calls this)."""
        self._rng = random.Random(seed)

    @property
    def steps(self) -> list[tuple[str, Any]]:
        return [(repr(self), self)]


class RandomResizedCropDecode(CropDecode):
    """``RandomResizedCrop(size, scale, ratio)`` + random horizontal flip, decoding only the crop.

    The region is drawn as torchvision draws it: up to ten tries of an area share in ``scale`` and a
    log-uniform aspect ratio in ``ratio``, else the largest centred crop within ``ratio``.

    Example:
        >>> t = RandomResizedCropDecode(32, seed=0)
        >>> t(torch.zeros(3, 60, 80, dtype=torch.uint8)).shape
        torch.Size([3, 32, 32])
    """

    def __init__(
        self,
        size: int,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        seed: int = 0,
    ) -> None:
        super().__init__(size, seed)
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale={list(scale)}: need 0 < min <= max <= 1")
        if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio={list(ratio)}: need 0 < min <= max")
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"hflip={hflip}: must be a probability in [0, 1]")
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.hflip = float(hflip)
        self._log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))

    def region(self, width: int, height: int, rng: random.Random) -> Region:
        area = width * height
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*self._log_ratio))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                x = rng.randint(0, width - w)
                y = rng.randint(0, height - h)
                return Region(x, y, w, h, self._flip(rng))
        aspect = width / height  # fallback: centre crop, aspect clamped into ``ratio``
        if aspect < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif aspect > self.ratio[1]:
            w, h = round(height * self.ratio[1]), height
        else:
            w, h = width, height
        w, h = max(1, min(w, width)), max(1, min(h, height))
        return Region((width - w) // 2, (height - h) // 2, w, h, self._flip(rng))

    def _flip(self, rng: random.Random) -> bool:
        return self.hflip > 0 and bool(rng.random() < self.hflip)

    def __repr__(self) -> str:
        return (
            f"RandomResizedCropDecode(size={self.size}, scale={list(self.scale)}, "
            f"ratio={[round(r, 4) for r in self.ratio]}, hflip={self.hflip})"
        )


class CenterCropDecode(CropDecode):
    """``Resize(resize)`` of the short side then ``CenterCrop(size)``, decoding only the centre.

    Deterministic: the evaluation counterpart of :class:`RandomResizedCropDecode`.

    Example:
        >>> CenterCropDecode(32, resize=36)(torch.zeros(3, 60, 80, dtype=torch.uint8)).shape
        torch.Size([3, 32, 32])
    """

    def __init__(self, size: int, resize: int | None = None) -> None:
        super().__init__(size)
        self.resize = size if resize is None else int(resize)
        if self.resize < size:
            raise ValueError(f"resize={resize}: must be >= size={size}")

    def region(self, width: int, height: int, rng: random.Random) -> Region:
        # Where torchvision's Resize + CenterCrop would cut, mapped back to the source pixels.
        if width <= height:
            resized_w, resized_h = self.resize, int(self.resize * height / width)
        else:
            resized_w, resized_h = int(self.resize * width / height), self.resize
        left, top = round((resized_w - self.size) / 2), round((resized_h - self.size) / 2)
        sx, sy = width / resized_w, height / resized_h
        w = max(1, min(width, round(self.size * sx)))
        h = max(1, min(height, round(self.size * sy)))
        return Region(min(round(left * sx), width - w), min(round(top * sy), height - h), w, h)

    def __repr__(self) -> str:
        return f"CenterCropDecode(size={self.size}, resize={self.resize})"


def _dct_scale(width: int, height: int, size: int) -> int:
    """The smallest N in ``_SCALES`` (of N/8) that keeps the scaled crop at least ``size`` each way."""
    for num in _SCALES:
        if width * num // 8 >= size and height * num // 8 >= size:
            return num
    return 8


_LOCAL = threading.local()


def _scratch(nbytes: int) -> np.ndarray:
    """A reused per-thread buffer for the decoded region (grown as needed)."""
    buffer: np.ndarray | None = getattr(_LOCAL, "scratch", None)
    if buffer is None or buffer.size < nbytes:
        buffer = _LOCAL.scratch = np.empty(max(nbytes, 1 << 20), dtype=np.uint8)
    return buffer


def _resize_into(decoded: np.ndarray, out: np.ndarray, transpose: bool, left_right: bool, top_bottom: bool) -> None:
    """Resize ``decoded`` into the square ``out``, then transpose and flip it (the EXIF turn and the
    augmentation's mirror, combined)."""
    import cv2

    size = (out.shape[1], out.shape[0])
    if decoded.shape[2] == 1:
        decoded, target = decoded[:, :, 0], out[:, :, 0]
    else:
        target = out
    if transpose:  # only for turned photographs: one small temporary
        cv2.transpose(cv2.resize(decoded, size, interpolation=cv2.INTER_LINEAR), dst=target)
    else:
        cv2.resize(decoded, size, dst=target, interpolation=cv2.INTER_LINEAR)
    if left_right or top_bottom:  # in place: OpenCV swaps the ends, no temporary image
        cv2.flip(target, -1 if left_right and top_bottom else int(left_right), dst=target)
