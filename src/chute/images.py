"""Reading images from disk into uint8 tensors, with errors that name the file."""

from __future__ import annotations

import io
import os
import re
import warnings
from typing import Literal

import numpy as np
import torch
from torchcodec.decoders import decode_image

from chute import exif, fastpaths
from chute.errors import DataError

ImageMode = Literal["RGB", "L"]

#: Extensions treated as images when scanning folders (compared lower-case).
IMG_EXTENSIONS = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"
)  # fmt: skip

# libjpeg-turbo / libpng / libwebp / giflib through TorchCodec (torchvision.io's image decoders,
# deprecated since torchvision 0.29, point there); everything else goes through PIL.
_FAST_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif")
_READ_MODES: dict[str, Literal["RGB", "GRAY"]] = {"RGB": "RGB", "L": "GRAY"}
_CHANNELS = {"RGB": 3, "L": 1}
_JPEG_MAGIC = b"\xff\xd8\xff"
_EOI = b"\xff\xd9"
_COLORSPACE_CMYK = (4, 5)  # JCS_CMYK, JCS_YCCK: libjpeg cannot convert them to RGB; TorchCodec does

# The crop decoder's extension is also the strict whole-image JPEG decoder (see _decode_jpeg); without
# it, simplejpeg (libjpeg-turbo in a wheel) is, just as strict.
_jpegcrop = fastpaths.jpegcrop


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
        mode: ``"RGB"`` (3 channels) or ``"L"`` (1 channel). Grayscale, palette, CMYK and RGBA files
            are converted as Pillow's ``Image.convert`` does (RGBA: the alpha channel is dropped).

    Raises:
        DataError: The file is missing, empty, cannot be decoded (corrupt, truncated, not an image)
            or has more pixels than the decompression-bomb limit; the message names the file.
    """
    return decode_bytes(path, read_bytes(path), mode)


def decode_bytes(path: str, data: bytes, mode: ImageMode = "RGB") -> torch.Tensor:
    """:func:`read_image` on bytes already read from ``path`` (which names the file in errors).

    JPEGs decode through libjpeg-turbo with corrupt-data warnings treated as errors, so a file cut
    short (even one ending in an end-of-image marker) fails instead of coming out half grey; CMYK
    JPEGs, PNG, WebP and GIF through TorchCodec; other formats through Pillow. Every file's size is
    read from its header first and checked against the decompression-bomb limit. An EXIF
    orientation tag is applied on every path (chute's JPEG decoder reads it with :mod:`chute.exif`;
    TorchCodec and Pillow apply it themselves), as Pillow's ``ImageOps.exif_transpose`` shows it.
    """
    channels_of(mode)
    if not data:
        raise DataError(f"Cannot decode image '{path}': the file is empty (0 bytes). Remove or replace it.")
    ext = os.path.splitext(path)[1].lower()
    try:
        strict_jpeg = check_image_size(path, data)
        if strict_jpeg:
            image = exif.orient(_decode_jpeg(data, mode, *strict_jpeg), exif.orientation(data))
        elif ext in _FAST_EXTENSIONS:
            image = _decode_fast(data, mode)  # TorchCodec applies the tag itself
        else:
            image = _decode_pil(data, mode)  # Pillow reads and applies the tag itself
    except DataError:
        raise
    except Exception as err:  # the decoders raise RuntimeError, OSError, ValueError, ...
        raise DataError(f"Cannot decode image '{path}': {_reason(err)}. The file is corrupt or not an image.") from err
    if image.ndim != 3 or image.shape[0] != _CHANNELS[mode]:
        raise DataError(f"Cannot decode image '{path}': got shape {tuple(image.shape)}, expected {mode} channels.")
    return image


def check_image_size(path: str, data: bytes) -> tuple[int, int] | None:
    """Read the image's size from its header and refuse one over the decompression-bomb limit.

    The limit is Pillow's ``PIL.Image.MAX_IMAGE_PIXELS`` (about 89 megapixels unless changed; ``None``
    turns the check off), applied to every format before any pixel is decoded: TorchCodec and
    libjpeg have no such limit of their own.

    Returns:
        ``(width, height)`` for a JPEG the strict libjpeg-turbo decoder takes (not CMYK), else ``None``.

    Raises:
        DataError: The image has more pixels than the limit (naming the file, its size and the
            limit), or its header cannot be read.
    """
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if data.startswith(_JPEG_MAGIC):
        try:
            width, height, cmyk = _jpeg_header(data)
        except ValueError as err:  # chute._jpegcrop.DecodeError and simplejpeg's errors
            raise DataError(f"Cannot decode image '{path}': {err}. The file is corrupt or not an image.") from None
        # Without an end-of-image marker (ignoring zero padding) the file was cut short: TorchCodec
        # reports that, and tolerates bytes after the marker, which the strict path would not see.
        ends = data.rstrip(b"\0").endswith(_EOI)
        strict = (width, height) if ends and not cmyk else None
    else:
        strict = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below, naming the file
                with Image.open(io.BytesIO(data)) as img:
                    width, height = img.size
        except Image.DecompressionBombError as err:  # over twice the limit: Pillow does not say the size
            found = re.search(r"\((\d+) pixels\)", str(err))
            size = f"has {int(found.group(1)):,} pixels" if found else "is too large"
            raise DataError(_bomb_message(path, size, limit)) from None
        except Image.UnidentifiedImageError:
            reason = "no image format recognised (Pillow, TorchCodec)"
            raise DataError(f"Cannot decode image '{path}': {reason}. The file is corrupt or not an image.") from None
        except Exception as err:
            reason = _reason(err)
            raise DataError(f"Cannot decode image '{path}': {reason}. The file is corrupt or not an image.") from None
    check_pixel_limit(path, width, height)
    return strict


def check_pixel_limit(path: str, width: int, height: int, what: str = "Image", frames: bool = False) -> None:
    """Refuse ``width`` x ``height`` pixels (per frame, with ``frames``) over the decompression-bomb
    limit, ``PIL.Image.MAX_IMAGE_PIXELS`` (``None`` turns it off): one rule for images and videos."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        pixels = f"{width}x{height} = {width * height:,}"
        size = f"has {pixels}-pixel frames" if frames else f"is {pixels} pixels"
        raise DataError(_bomb_message(path, size, limit, what))


def _reason(err: BaseException) -> str:
    """The first line of a decoder's message, without TorchCodec's source location."""
    text = str(err).strip()
    if not text:
        return type(err).__name__
    line = text.splitlines()[0].rstrip(".")
    return re.sub(r"^\w+, \S+\.(cpp|c|h):\d+, ", "", line)


def _bomb_message(path: str, size: str, limit: int | None, what: str = "Image") -> str:
    return (
        f"{what} '{path}' {size}, over the decompression-bomb limit of {int(limit or 0):,} pixels "
        "(PIL.Image.MAX_IMAGE_PIXELS). Shrink or remove the file, or raise that limit (None turns it off) if "
        "the file is trusted."
    )


def read_bytes(path: str) -> bytes:
    """The file's bytes; a missing or unreadable file raises a :class:`DataError` naming it."""
    try:  # os-level calls: no buffered file object per image (a few microseconds each)
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            data = os.read(fd, size)
            if size and len(data) == size:
                return data
            parts = [data]  # a short read (over 2 GB, a special file): read on to the end
            while chunk := os.read(fd, 1 << 20):
                parts.append(chunk)
            return b"".join(parts)
        finally:
            os.close(fd)
    except OSError as err:
        raise DataError(f"Cannot read image '{path}': {err.strerror or err}") from err


def _decode_fast(data: bytes, mode: ImageMode) -> torch.Tensor:
    image = decode_image(data, mode=_READ_MODES[mode])
    if image.ndim == 4:  # animated GIF: keep the first frame
        image = image[0]
    return image


def _jpeg_header(data: bytes) -> tuple[int, int, bool]:
    """``(width, height, cmyk)`` of JPEG ``data``; raises ``ValueError`` for an unreadable header."""
    if _jpegcrop is not None:
        width, height, _, colorspace = _jpegcrop.header(data)
        return width, height, colorspace in _COLORSPACE_CMYK
    import simplejpeg

    height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    return width, height, colorspace in ("CMYK", "YCCK")


def _decode_jpeg(data: bytes, mode: ImageMode, width: int, height: int) -> torch.Tensor:
    """Decode a whole JPEG with libjpeg-turbo (the same pixels as TorchCodec), turning its corrupt-data
    warnings into errors, which TorchCodec lets pass: through chute's extension, or without it
    simplejpeg in strict mode."""
    if _jpegcrop is None:
        import simplejpeg

        array = simplejpeg.decode_jpeg(data, colorspace="GRAY" if mode == "L" else "RGB", strict=True)
        return torch.from_numpy(array).permute(2, 0, 1)
    out = torch.empty((height, width, _CHANNELS[mode]), dtype=torch.uint8)
    _jpegcrop.decode_into(data, 0, 0, width, height, 8, mode == "L", out.numpy())
    return out.permute(2, 0, 1)


def _decode_pil(data: bytes, mode: ImageMode) -> torch.Tensor:
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as opened:
        img = ImageOps.exif_transpose(opened)
        if img.mode in _WIDE_MODES:  # 16-bit or 32-bit single-channel: convert() would clip at 255
            gray = _scale_to_uint8(np.asarray(img))
            array = gray[:, :, None].repeat(_CHANNELS[mode], axis=2)
        else:
            array = np.asarray(img.convert(mode))
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(np.array(array.transpose(2, 0, 1), order="C"))  # a writable copy


# Pillow's modes for single-channel images wider than 8 bits (16-bit TIFF/PGM, 32-bit int and float).
# Colour images of 16 bits per channel Pillow already reduces to 8 bits by their high byte.
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """8 bits by scaling: integers over their 16-bit range (or, past it, over 32 bits), floats in [0, 1]
    (a float image whose values go past 1 is scaled by its maximum)."""
    if values.dtype.kind == "f":
        finite = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        top = float(finite.max()) if finite.size else 1.0
        scaled = finite.clip(0.0, None) / (top if top > 1.0 else 1.0) * 255.0
    else:
        wide = values.astype(np.float64).clip(0.0, None)
        top = 65535.0 if (wide.max() if wide.size else 0) <= 65535 else float(2**31 - 1)
        scaled = wide / top * 255.0
    return np.rint(scaled).clip(0, 255).astype(np.uint8)
