"""Without the compiled crop decoder (issue 13): the same guarantees, said once, and a report command.

``CHUTE_NATIVE=0`` turns ``chute._jpegcrop`` (and ``chute._pixels``) off for a process, as if the
install could not build it (no C compiler or no libjpeg headers), so these run on any machine.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chute import fastpaths, images
from chute.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, *args: str, native: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHUTE_NATIVE": "1" if native else "0", "PYTHONWARNINGS": "error"}
    command = [sys.executable, *(["-c", code] if code else []), *args]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _photo(seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


def test_the_fallback_decodes_the_same_pixels_strictly(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _photo()
    native = images.decode_bytes("a.jpg", data).numpy() if fastpaths.jpegcrop is not None else None
    monkeypatch.setattr(images, "_jpegcrop", None)
    fallback = images.decode_bytes("a.jpg", data)
    reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).transpose(2, 0, 1)
    assert np.abs(fallback.numpy().astype(int) - reference).max() <= 1  # libjpeg-turbo, like Pillow's
    if native is not None:
        assert np.array_equal(fallback.numpy(), native)
    assert images.decode_bytes("a.jpg", data, "L").shape == (1, 48, 64)
    cut = data[: len(data) // 2] + b"\xff\xd9"  # cut short, closed with an end-of-image marker
    with pytest.raises(DataError, match=r"'cut\.jpg'.*premature end"):
        images.decode_bytes("cut.jpg", cut)
    with pytest.raises(DataError, match=r"'head\.jpg'"):
        images.decode_bytes("head.jpg", data[:20])  # not even a whole header


def test_bad_images_are_refused_the_same_without_the_extension() -> None:
    """The image-reading tests (bad files, bombs, colour modes, EXIF, wide images) in a process without
    ``chute._jpegcrop``. (The whole suite passes with ``CHUTE_NATIVE=0`` too; this keeps the core of it
    in the default run.)"""
    picked = "broken_image or truncated or bomb or colour_modes or same_pixels or generic_decode or wide_images_scale"
    result = _run(
        "",
        "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_bad_samples.py", "tests/test_exif.py",
        "tests/test_images.py", "-k", picked,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


def test_a_missing_decoder_is_said_once_with_how_to_build_it(tmp_path: Path) -> None:
    code = """
import logging, sys
logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(message)s")
from chute.datamodules import ImageFolderDataModule
from chute.datasets import PhotoFolder
root = PhotoFolder(num_images=40, val_fraction=0.5, width=(64, 96))(sys.argv[1])
from chute.transforms import create_transforms
t = create_transforms(image_size=32)
dm = ImageFolderDataModule(root, train_transform=t.train, val_transform=t.val, loader={"batch_size": 4})
dm.setup("fit"); dm.setup("validate")
images, _ = next(iter(dm.train_dataloader()))
print(tuple(images.shape))
"""
    pytest.importorskip("skimage")
    result = _run(code, str(tmp_path / "photos"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("(4, 3, 32, 32)")
    assert result.stderr.count("crop-aware JPEG decoder (chute._jpegcrop) is turned off by CHUTE_NATIVE=0") == 1
    assert "apt install gcc libjpeg-dev" in result.stderr
    assert "python -m chute.info" in result.stderr


def test_info_lists_fast_paths_and_versions() -> None:
    off = _run("", "-m", "chute.info")
    assert off.returncode == 0, off.stderr
    assert "[ ] crop-aware JPEG decoding (chute._jpegcrop): turned off by CHUTE_NATIVE=0" in off.stdout
    assert "strict whole-JPEG decoding: simplejpeg" in off.stdout
    assert "[ ] uint8 -> normalized float on the CPU (chute._pixels): turned off by CHUTE_NATIVE=0" in off.stdout
    assert "OpenCV's LUT instead" in off.stdout
    for name in ("torch ", "torchvision", "lightning", "torchcodec", "simplejpeg", "pillow", "opencv"):
        assert name in off.stdout
    on = _run("", "-m", "chute.info", native=True)
    built = fastpaths.jpegcrop is not None
    assert ("[x] crop-aware JPEG decoding (chute._jpegcrop): libjpeg-turbo" in on.stdout) == built
    assert ("[x] uint8 -> normalized float on the CPU (chute._pixels): vectorized" in on.stdout) == (
        fastpaths.pixels is not None
    )
