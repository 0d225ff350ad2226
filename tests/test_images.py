"""Reading images as a user's files come (issue 13): more than 8 bits per sample scales to 8 bits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from chute.datamodules import ImageFolderDataModule
from chute.images import read_image
from chute.transforms import create_transforms

RNG = np.random.default_rng(0)
GRAY16 = RNG.integers(0, 65536, (20, 24)).astype(np.uint16)
RGB16 = RNG.integers(0, 65536, (20, 24, 3)).astype(np.uint16)


def _write(path: Path, kind: str) -> np.ndarray:
    """Write a wide image; return what its 8-bit grayscale (or RGB) reading should be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "gray16_tif":
        Image.fromarray(GRAY16).save(path)
        return np.rint(GRAY16 / 257.0)
    if kind == "gray16_png":
        Image.fromarray(GRAY16).save(path)
        return np.rint(GRAY16 / 257.0)
    if kind == "float32_tif":
        Image.fromarray((GRAY16 / 65535.0).astype(np.float32)).save(path)
        return np.rint(GRAY16 / 65535.0 * 255.0)
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(path, RGB16)
    return (RGB16 >> 8).astype(np.float64)  # Pillow keeps the high byte of 16-bit colour


CASES = {"gray16_tif": "a.tif", "gray16_png": "a.png", "float32_tif": "a.tif", "rgb16_tif": "a.tif"}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_wide_images_scale_to_8_bits(tmp_path: Path, kind: str) -> None:
    expected = _write(tmp_path / CASES[kind], kind)
    image = read_image(str(tmp_path / CASES[kind]), "RGB" if expected.ndim == 3 else "L").float()
    got = image.permute(1, 2, 0).squeeze(-1).numpy()
    assert np.abs(got - expected).max() <= 1.0, kind  # not clipped at 255
    assert (image == 255).float().mean() < 0.05


@pytest.mark.parametrize("cache", [None, "memory"])
def test_wide_images_reach_the_model_scaled_on_every_path(tmp_path: Path, cache: str | None) -> None:
    for i in range(4):
        for label in ("a", "b"):
            _write(tmp_path / "tree" / "train" / label / f"{i}.tif", "gray16_tif")
            _write(tmp_path / "tree" / "val" / label / f"{i}.tif", "gray16_tif")
    t = create_transforms(image_size=20, crop_pct=1.0)
    dm = ImageFolderDataModule(
        tmp_path / "tree", image_mode="L", train_transform=t.val, val_transform=t.val, cache=cache,
        cache_size=20 if cache else None, loader={"batch_size": 8},
    )  # fmt: skip
    dm.setup("fit")
    images, _ = next(iter(dm.val_dataloader()))
    assert images.dtype == torch.uint8
    assert (images == 255).float().mean() < 0.05
    preview, _ = dm.preview_batch("val", 4)
    assert (preview == 255).float().mean() < 0.05
    assert 0.3 < dm.mean[0] < 0.7  # the measured normalization sees real values, not saturated ones


@pytest.mark.parametrize("cache", [None, "disk"])
def test_file_names_that_are_not_utf8_are_read(
    tmp_path: Path, cache: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """Names from another system's encoding (latin-1 bytes): read, cached and reported by their bytes,
    in text any UTF-8 log file or report can write (``\\xef``, not Python's lone surrogate)."""
    import os

    root = os.fsencode(tmp_path / "tree")
    for split in (b"train", b"val"):
        for label in (b"caf\xe9", b"plain"):
            folder = os.path.join(root, split, label)
            os.makedirs(folder)
            for i in range(3):
                with open(os.path.join(folder, b"na\xefve-%d.png" % i), "wb") as f:
                    Image.fromarray(RNG.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(f, format="PNG")
    broken = os.path.join(root, b"train", b"plain", b"bro\xefken.png")
    with open(broken, "wb") as f:
        f.write(b"not an image")
    t = create_transforms(image_size=8, crop_pct=1.0)
    dm = ImageFolderDataModule(
        tmp_path / "tree", train_transform=t.train, val_transform=t.val, on_error="skip", max_bad_fraction=0.5,
        cache=cache, cache_size=8 if cache else None, cache_dir=str(tmp_path / "cache"), loader={"batch_size": 4},
    )  # fmt: skip
    dm.setup("fit")
    assert len(dm.class_names) == 2
    images = torch.cat([b[0] for b in dm.train_dataloader()])
    assert len(images) == 7
    assert dm.bad_samples["train"]["skipped"] == 1
    assert "bro" in dm.bad_samples["train"]["first"][0]
    warnings = [r.getMessage() for r in caplog.records if "Skipping a bad image" in r.getMessage()]
    assert len(warnings) == 1
    assert "bro\\xefken.png" in warnings[0].encode("utf-8").decode("utf-8")
