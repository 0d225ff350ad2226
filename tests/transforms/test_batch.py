from __future__ import annotations

import pickle

import pytest
import torch
from torchvision.transforms import v2

from chute.transforms import NormalizeBatch


def test_matches_torchvision_normalize() -> None:
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    expected = v2.Normalize(mean, std)(images.float() / 255)
    out = NormalizeBatch(mean, std)(images)
    assert out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("n", [0, 1, 5])
def test_channels_last_uint8_takes_the_lookup_table_with_the_same_result(channels: int, n: int) -> None:
    """A channels-last uint8 batch on the CPU (what crop-aware decoding and the uint8 crop give)
    normalizes through OpenCV's LUT: the same values as the generic path, channels-last out; an
    empty batch (every image of it skipped) too."""
    mean, std = [0.1, 0.5, 0.7, 0.3][:channels], [0.2, 0.25, 0.3, 0.4][:channels]
    images = torch.randint(0, 256, (n, 9, 11, channels), dtype=torch.uint8).permute(0, 3, 1, 2)
    out = NormalizeBatch(mean, std)(images)
    expected = NormalizeBatch(mean, std)(images.contiguous())  # NCHW in: the generic path
    assert out.dtype == torch.float32
    assert out.shape == (n, channels, 9, 11)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_float_input_is_taken_as_unit_range() -> None:
    images = torch.rand(2, 1, 4, 4)
    out = NormalizeBatch([0.5], [0.5], channels_last=False)(images)
    torch.testing.assert_close(out, (images - 0.5) / 0.5)


@pytest.mark.parametrize(("mean", "std", "match"), [([0.5], [0.5, 0.5], "channels"), ([0.5], [0.0], "std")])
def test_bad_stats(mean: list[float], std: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NormalizeBatch(mean, std)


def test_channel_mismatch_is_explained() -> None:
    with pytest.raises(ValueError, match="3 channels but mean/std have 1"):
        NormalizeBatch([0.5], [0.5])(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))


def test_pickles_without_device_cache() -> None:
    norm = NormalizeBatch([0.5], [0.5])
    norm(torch.zeros(1, 1, 2, 2, dtype=torch.uint8))
    assert pickle.loads(pickle.dumps(norm))._cache == {}
