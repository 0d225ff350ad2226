"""Crop-aware JPEG decoding: same geometry as torchvision, fast path where it applies, fallbacks elsewhere."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from chute.datasets.folder import ImageFolderDataset
from chute.datasets.folder_index import scan_folder
from chute.images import read_image
from chute.transforms import Pipeline, create_transforms
from chute.transforms.fused import NATIVE, CenterCropDecode, RandomResizedCropDecode, _dct_scale

needs_native = pytest.mark.skipif(not NATIVE, reason="chute._jpegcrop was not built (no compiler or libjpeg headers)")


def photo(width: int = 320, height: int = 240, seed: int = 0) -> np.ndarray:
    """A smooth colour image with structure (JPEG-friendly, unlike noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [np.sin(x / rng.uniform(15, 60) + rng.uniform(0, 6)) + np.cos(y / rng.uniform(15, 60)) for _ in range(3)]
    return ((np.stack(channels, -1) + 2) * 63).clip(0, 255).astype(np.uint8)


def jpeg(array: np.ndarray, mode: str | None = None, **save: object) -> bytes:
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90, **save)
    return out.getvalue()


def tensor_of(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy()).permute(2, 0, 1)


@needs_native
@pytest.mark.parametrize("size", [(320, 240), (640, 480), (97, 61), (1000, 260)])
def test_fast_path_matches_torchvision_on_the_same_region(size: tuple[int, int]) -> None:
    data = jpeg(photo(*size))
    image = tensor_of(data)
    train = RandomResizedCropDecode(64)
    for seed in range(20):
        out = np.empty((64, 64, 3), np.uint8)
        assert train.decode_into(data, out, rng=random.Random(seed))
        expected = train(image, rng=random.Random(seed))  # the same region and flip, torchvision resize
        diff = (torch.from_numpy(out).permute(2, 0, 1).float() - expected.float()).abs().mean()
        assert diff < 4.0, f"seed {seed}: mean abs difference {diff:.2f} levels"
    val = CenterCropDecode(64, resize=73)
    out = np.empty((64, 64, 3), np.uint8)
    assert val.decode_into(data, out)
    reference = F.center_crop(F.resize(image, [73], antialias=True), [64, 64])
    assert (torch.from_numpy(out).permute(2, 0, 1).float() - reference.float()).abs().mean() < 4.0


@needs_native
def test_grayscale_output_and_grayscale_files() -> None:
    rgb = photo()
    gray_file = jpeg(rgb, mode="L")
    t = CenterCropDecode(32)
    one = np.empty((32, 32, 1), np.uint8)
    assert t.decode_into(jpeg(rgb), one, gray=True)
    three = np.empty((32, 32, 3), np.uint8)
    assert t.decode_into(gray_file, three)  # a grayscale JPEG is expanded to RGB
    assert np.array_equal(three[..., 0], three[..., 1])
    assert np.array_equal(three[..., 1], three[..., 2])


def test_regions_follow_random_resized_crop_rules() -> None:
    t = RandomResizedCropDecode(224, scale=(0.25, 0.5), ratio=(0.5, 2.0), hflip=0.5)
    rng = random.Random(0)
    flips = 0
    for _ in range(500):
        r = t.region(500, 375, rng)
        assert r.x >= 0
        assert r.x + r.width <= 500
        assert r.y >= 0
        assert r.y + r.height <= 375
        assert 0.24 <= r.width * r.height / (500 * 375) <= 0.51
        assert 0.49 <= r.width / r.height <= 2.05
        flips += r.flip
    assert 200 < flips < 300
    assert [t.region(500, 375, random.Random(3)) for _ in range(2)] == [t.region(500, 375, random.Random(3))] * 2
    assert t.region(1, 1, rng).width == 1  # a 1-pixel image still gives a region
    assert not any(RandomResizedCropDecode(8, hflip=0.0).region(50, 50, rng).flip for _ in range(50))


def test_dct_scale_keeps_the_crop_at_least_the_output_size() -> None:
    assert _dct_scale(900, 900, 224) == 2  # 900 * 2/8 = 225 >= 224
    assert _dct_scale(500, 460, 224) == 4
    assert _dct_scale(447, 1000, 224) == 8  # 447 * 4/8 < 224: full resolution
    assert _dct_scale(100, 100, 224) == 8  # upscaling


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not an image at all", id="text"),
        pytest.param(None, id="png"),
        pytest.param("cmyk", id="cmyk-jpeg"),
        pytest.param("truncated", id="truncated-jpeg"),
    ],
)
def test_fast_path_declines_what_it_cannot_decode(data: bytes | str | None) -> None:
    if data is None:
        buffer = io.BytesIO()
        Image.fromarray(photo()).save(buffer, format="PNG")
        data = buffer.getvalue()
    elif data == "cmyk":
        data = jpeg(photo(), mode="CMYK")
    elif data == "truncated":
        data = jpeg(photo())[:2000]
    out = np.full((16, 16, 3), 7, np.uint8)
    assert not RandomResizedCropDecode(16).decode_into(data, out)
    assert (out == 7).all()  # untouched: the caller decodes generically


def write_tree(root: Path) -> Path:
    """One class of mixed files: RGB, grayscale, progressive and CMYK JPEGs, a PNG, a tiny JPEG."""
    folder = root / "a"
    folder.mkdir(parents=True)
    (folder / "rgb.jpg").write_bytes(jpeg(photo(300, 200)))
    (folder / "gray.jpg").write_bytes(jpeg(photo(200, 300), mode="L"))
    (folder / "progressive.jpg").write_bytes(jpeg(photo(333, 222), progressive=True))
    (folder / "cmyk.jpg").write_bytes(jpeg(photo(240, 240), mode="CMYK"))
    (folder / "tiny.jpg").write_bytes(jpeg(photo(9, 5)))
    Image.fromarray(photo(120, 90)).save(folder / "z.png")
    return root


def test_dataset_batches_mix_fast_and_generic_files(tmp_path: Path) -> None:
    index = scan_folder(write_tree(tmp_path))
    t = create_transforms(image_size=32)
    assert isinstance(t.train, RandomResizedCropDecode)
    assert isinstance(t.val, CenterCropDecode)
    dataset = ImageFolderDataset(index, t.val)
    images, labels = dataset.__getitems__(list(range(len(index))))
    assert images.shape == (6, 3, 32, 32)
    assert images.dtype == torch.uint8
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert labels.tolist() == [0] * 6
    for i in range(len(index)):  # the batch equals the samples one by one, and the generic path
        single, _ = dataset[i]
        assert torch.equal(single, images[i])
        generic = t.val(read_image(index.path(i)))
        assert (generic.float() - single.float()).abs().mean() < 6.0, index.path(i)
    samples = ImageFolderDataset(index, t.val, gather=False).__getitems__([0, 1])
    assert isinstance(samples, list)
    assert len(samples) == 2


def test_settings_choose_the_fast_path_only_for_crop_and_flip() -> None:
    assert isinstance(create_transforms(image_size=32).train, RandomResizedCropDecode)
    for other in ({"rotation": 10.0}, {"color_jitter": 0.2}, {"vflip": 0.5}, {"interpolation": "bicubic"},
                  {"fast_decode": False}, {"backend": "albumentations"}):  # fmt: skip
        t = create_transforms(image_size=32, **other)
        assert isinstance(t.train, Pipeline), other
        assert isinstance(t.val, Pipeline), other


def test_reseed_makes_the_tensor_path_repeatable() -> None:
    t = RandomResizedCropDecode(16)
    image = torch.from_numpy(photo(64, 48)).permute(2, 0, 1)
    t.reseed(5)
    first = [t(image) for _ in range(3)]
    t.reseed(5)
    assert all(torch.equal(a, t(image)) for a in first)
