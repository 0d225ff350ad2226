"""EXIF orientation of a JPEG: read the tag from the file's bytes, and turn pixels the way it says.

A phone held sideways stores its photo in the sensor's frame and writes an EXIF ``Orientation``
tag (1-8) saying how to turn it for display. Pillow's ``ImageOps.exif_transpose`` applies it, and
TorchCodec's image decoders do (JPEG, PNG, WebP); libjpeg-turbo, under chute's crop-aware and strict
JPEG decoders, does not. chute reads the tag itself there, so that every decode path delivers the
image as ``exif_transpose`` shows it.

Reading the tag walks the application segments after the start-of-image marker (EXIF must be among
them), never the pixels: a file without the tag costs one or two struct reads.

Each orientation is a transpose (or not) followed by left-right and top-bottom flips of the stored
pixels: :data:`STEPS`.
"""

from __future__ import annotations

import struct

import torch

_ORIENTATION_TAG = 0x0112
_EXIF_HEADER = b"Exif\0\0"

#: Orientation -> (transpose, flip left-right, flip top-bottom), applied to the stored pixels in
#: that order, give the displayed image (the same result as Pillow's ``ImageOps.exif_transpose``).
STEPS: dict[int, tuple[bool, bool, bool]] = {
    1: (False, False, False),
    2: (False, True, False),  # mirrored
    3: (False, True, True),  # upside down
    4: (False, False, True),  # mirrored upside down
    5: (True, False, False),  # transposed
    6: (True, True, False),  # stored turned 90° anticlockwise: turn it clockwise
    7: (True, True, True),  # transverse
    8: (True, False, True),  # stored turned 90° clockwise: turn it anticlockwise
}


def orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) of JPEG ``data``; 1 when it has none, when the tag is malformed, or
    for another format."""
    try:
        return _jpeg(data) if data[:2] == b"\xff\xd8" else 1
    except (struct.error, IndexError, ValueError):
        return 1  # a header too short or inconsistent to hold the tag: the decoder reports real damage


def orient(image: torch.Tensor, code: int) -> torch.Tensor:
    """``image`` (``(..., H, W)``) turned as EXIF orientation ``code`` says (a contiguous copy unless 1)."""
    transpose, left_right, top_bottom = STEPS.get(code, STEPS[1])
    if not (transpose or left_right or top_bottom):
        return image
    if transpose:
        image = image.transpose(-1, -2)
    dims = [d for d, flip in ((-1, left_right), (-2, top_bottom)) if flip]
    return (image.flip(dims) if dims else image).contiguous()


def _jpeg(data: bytes) -> int:
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if not 0xE0 <= marker <= 0xEF:  # past the application segments: EXIF cannot follow
            return 1
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker == 0xE1 and data[pos + 4 : pos + 10] == _EXIF_HEADER:
            return _tiff(data[pos + 10 : pos + 2 + length])
        pos += 2 + length
    return 1


def _tiff(block: bytes) -> int:
    """The orientation entry of IFD0 in a TIFF-structured EXIF block."""
    order = {b"II": "<", b"MM": ">"}.get(block[:2])
    if order is None:
        return 1
    (ifd,) = struct.unpack_from(order + "I", block, 4)
    (count,) = struct.unpack_from(order + "H", block, ifd)
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        tag, kind = struct.unpack_from(order + "HH", block, entry)
        if tag == _ORIENTATION_TAG:
            if kind not in (3, 4):  # SHORT (as the standard says) or LONG; anything else is malformed
                return 1
            (value,) = struct.unpack_from(order + ("H" if kind == 3 else "I"), block, entry + 8)
            return value if value in STEPS else 1
    return 1
