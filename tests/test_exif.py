"""EXIF orientation (issue 13): every decode path delivers an image as ``ImageOps.exif_transpose`` shows it."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from chute import exif
from chute.datamodules import ImageFolderDataModule
from chute.images import decode_bytes
from chute.transforms import create_transforms
from chute.transforms.fused import NATIVE, CenterCropDecode, RandomResizedCropDecode

# What the user sees: 96 wide, 64 high, four coloured quarters and a white corner, so every turn
# and mirror of it differs from it everywhere.
SHOWN = np.zeros((64, 96, 3), np.uint8)
SHOWN[:32, :48], SHOWN[:32, 48:] = (255, 0, 0), (0, 255, 0)
SHOWN[32:, :48], SHOWN[32:, 48:] = (0, 0, 255), (255, 255, 0)
SHOWN[:16, :16] = 255

# How a camera stores what it shows for each tag: the inverse of the turn the tag asks for.
_STORED = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
ORIENTATIONS = range(1, 9)
FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP", "tif": "TIFF", "cmyk.jpg": "JPEG"}


def encode(code: int, ext: str = "jpg") -> bytes:
    """``SHOWN`` stored as a camera would store it with orientation ``code``."""
    image = Image.fromarray(SHOWN)
    if _STORED[code] is not None:
        image = image.transpose(_STORED[code])
    if ext == "cmyk.jpg":
        image = image.convert("CMYK")
    tags = Image.Exif()
    tags[0x0112] = code
    out = io.BytesIO()
    image.save(out, FORMATS[ext], exif=tags.tobytes(), **({"quality": 95} if "jpg" in ext else {}))
    return out.getvalue()


def shown_by_pillow(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def _diff(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean())


def test_the_tag_is_read_from_jpeg_bytes() -> None:
    assert [exif.orientation(encode(code)) for code in ORIENTATIONS] == list(ORIENTATIONS)
    plain = io.BytesIO()
    Image.fromarray(SHOWN).save(plain, "JPEG")
    assert exif.orientation(plain.getvalue()) == 1
    assert exif.orientation(b"\xff\xd8\xff\xe1\x00") == 1  # cut inside the segment: no tag, no crash
    assert exif.orientation(encode(6, "png")) == 1  # other formats: their decoders apply it


@pytest.mark.parametrize("ext", sorted(FORMATS))
@pytest.mark.parametrize("code", ORIENTATIONS)
def test_generic_decode_shows_what_pillow_shows(code: int, ext: str) -> None:
    data = encode(code, ext)
    expected = shown_by_pillow(data)
    assert _diff(expected, SHOWN) < 4  # the file really carries the turn (JPEG loss aside)
    got = decode_bytes(f"x.{ext}", data).permute(1, 2, 0)
    assert tuple(got.shape) == expected.shape
    assert _diff(got, expected) < 1.0, (code, ext)


@pytest.mark.skipif(not NATIVE, reason="the crop-aware decoder is not built")
@pytest.mark.parametrize("code", ORIENTATIONS)
@pytest.mark.parametrize("transform", [RandomResizedCropDecode(32), CenterCropDecode(32, resize=36)], ids=repr)
def test_crop_aware_decode_crops_the_shown_image(code: int, transform: RandomResizedCropDecode) -> None:
    """The region is drawn in the displayed frame: the same draw as the generic path on the turned image."""
    data = encode(code)
    shown = decode_bytes("x.jpg", data)
    for key in range(12):
        out = np.empty((32, 32, 3), np.uint8)
        assert transform.decode_into(data, out, rng=random.Random(key))
        generic = transform(shown, rng=random.Random(key)).permute(1, 2, 0)
        assert _diff(out, generic) < 8, (code, key)  # resampling differs slightly; a wrong turn is > 60


def _tree(root: Path) -> Path:
    """One class folder per split holding the picture under all eight tags (and a second class)."""
    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for code in ORIENTATIONS:
                (folder / f"o{code}.jpg").write_bytes(encode(code))
    return root


@pytest.mark.parametrize(
    "path",
    ["raw", "crop-aware", "generic", "memory-cache", "disk-cache", "preview", "threads-crop-aware"],
)
def test_every_datamodule_path_delivers_the_shown_image(tmp_path: Path, path: str) -> None:
    root = _tree(tmp_path / "tree")
    size = 32
    t = create_transforms(image_size=size, crop_pct=1.0)
    kwargs: dict = {"val_transform": None}  # raw: every image is shown 96x64, so they collate
    if path in ("crop-aware", "threads-crop-aware", "preview"):
        kwargs = {"val_transform": t.val}
    elif path == "generic":
        kwargs = {"val_transform": create_transforms(image_size=size, crop_pct=1.0, fast_decode=False).val}
    elif path.endswith("cache"):
        kwargs = {"val_transform": t.val, "cache": path.split("-")[0], "cache_size": 40,
                  "cache_dir": str(tmp_path / "cache")}  # fmt: skip
    backend = "threads" if path.startswith("threads") else "torch"
    dm = ImageFolderDataModule(
        root, train_transform=t.val, loader={"batch_size": 16, "backend": backend, "num_workers": 0}, **kwargs
    )
    dm.setup("fit")
    if path == "preview":
        images, _ = dm.preview_batch("val", 16)
    else:
        images, _ = next(iter(dm.val_dataloader()))
    upright = images[0]  # o1.jpg of class a: no turn needed
    for image in images:
        assert _diff(image, upright) < 6  # a wrong turn or mirror moves whole colour quarters: > 60
    if path == "raw":
        assert _diff(upright.permute(1, 2, 0), SHOWN) < 4
