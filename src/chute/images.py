"""Reading images from disk into uint8 tensors, with errors that name the file."""

from __future__ import annotations

import os
from typing import Literal

import numpy as np
import torch
from torchcodec.decoders import decode_image

from chute.errors import DataError

ImageMode = Literal["RGB", "L"]

#: Extensions treated as images when scanning folders (compared lower-case).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")

# libjpeg-turbo / libpng / libwebp / giflib through TorchCodec (torchvision.io's image decoders,
# deprecated since torchvision 0.29, point there); everything else goes through PIL.
_FAST_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif")
_READ_MODES: dict[str, Literal["RGB", "GRAY"]] = {"RGB": "RGB", "L": "GRAY"}
_CHANNELS = {"RGB": 3, "L": 1}


def channels_of(mode: ImageMode) -> int:
    """Number of channels ``read_image`` returns for ``mode``."""
    try:
        return _CHANNELS[mode]
    except KeyError:
        raise ValueError(f"image_mode={mode!r}: must be 'RGB' (3 channels) or 'L' (grayscale, 1 channel)") from None


def read_image(path: str, mode: ImageMode = "RGB") -> torch.Tensor:
    """Decode the image at ``path`` into a ``uint8`` tensor of shape ``(C, H, W)``.

    Args:
        path: Image file.
        mode: ``"RGB"`` (3 channels; grayscale, palette and RGBA are converted) or ``"L"`` (1 channel).

    Raises:
        DataError: The file is missing, empty or cannot be decoded; the message names the file.
    """
    channels_of(mode)
    data = read_bytes(path)
    if not data:
        raise DataError(f"Cannot decode image '{path}': the file is empty (0 bytes). Remove or replace it.")
    ext = os.path.splitext(path)[1].lower()
    try:
        image = _decode_fast(data, mode) if ext in _FAST_EXTENSIONS else _decode_pil(data, mode)
    except Exception as err:  # the decoders raise RuntimeError, OSError, ValueError, ...
        reason = str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else type(err).__name__
        raise DataError(f"Cannot decode image '{path}': {reason}. The file is corrupt or not an image.") from err
    if image.ndim != 3 or image.shape[0] != _CHANNELS[mode]:
        raise DataError(f"Cannot decode image '{path}': got shape {tuple(image.shape)}, expected {mode} channels.")
    return image


def read_bytes(path: str) -> bytes:
    """The file's bytes; a missing or unreadable file raises a :class:`DataError` naming it."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise DataError(f"Cannot read image '{path}': {err.strerror or err}") from err


def _decode_fast(data: bytes, mode: ImageMode) -> torch.Tensor:
    image = decode_image(data, mode=_READ_MODES[mode])
    if image.ndim == 4:  # animated GIF: keep the first frame
        image = image[0]
    return image


def _decode_pil(data: bytes, mode: ImageMode) -> torch.Tensor:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        array = np.asarray(img.convert(mode))
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
