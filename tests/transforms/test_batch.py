from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from chute import fastpaths
from chute.transforms import NormalizeBatch


def test_matches_torchvision_normalize() -> None:
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    expected = v2.Normalize(mean, std)(images.float() / 255)
    out = NormalizeBatch(mean, std)(images)
    assert out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


_ONE_PASS = ["compiled", "opencv"]


@pytest.mark.parametrize("one_pass", _ONE_PASS)
@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("n", [0, 1, 5])
def test_channels_last_uint8_takes_one_pass_with_the_same_result(
    one_pass: str, channels: int, n: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A channels-last uint8 batch on the CPU (what crop-aware decoding and the uint8 crop give)
    normalizes in one pass (chute's compiled loop, or OpenCV's LUT where that is not built): the same
    values as the generic path, channels-last out; an empty batch (every image of it skipped) too."""
    if one_pass == "compiled" and fastpaths.pixels is None:
        pytest.skip(f"chute._pixels: {fastpaths.PIXELS_MISSING}")
    if one_pass == "opencv":
        monkeypatch.setattr(fastpaths, "pixels", None)
    mean, std = [0.1, 0.5, 0.7, 0.3][:channels], [0.2, 0.25, 0.3, 0.4][:channels]
    images = torch.randint(0, 256, (n, 9, 11, channels), dtype=torch.uint8).permute(0, 3, 1, 2)
    out = NormalizeBatch(mean, std)(images)
    expected = NormalizeBatch(mean, std)(images.contiguous())  # NCHW in: the generic path
    assert out.dtype == torch.float32
    assert out.shape == (n, channels, 9, 11)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    stats = torch.tensor([mean, std], dtype=torch.float64)[:, :, None, None]
    exact = (images.double() / 255 - stats[0]) / stats[1]
    torch.testing.assert_close(out.double(), exact, rtol=0, atol=2e-6)


@pytest.mark.skipif(fastpaths.pixels is None, reason=f"chute._pixels: {fastpaths.PIXELS_MISSING}")
def test_the_compiled_pass_is_the_one_taken_where_it_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where ``chute._pixels`` is built, a CPU trainer's batches go through it, not OpenCV's LUT (it is
    ~3x faster, docs/benchmarks.md), for every block length and a ragged tail."""
    import cv2

    calls = []
    monkeypatch.setattr(cv2, "LUT", lambda *args, **kwargs: calls.append("lut"))
    norm = NormalizeBatch([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    for width in (1, 15, 16, 17, 33):  # 3 * 16 values make one block of the loop
        images = torch.randint(0, 256, (2, 3, 3, width), dtype=torch.uint8).contiguous(
            memory_format=torch.channels_last
        )
        torch.testing.assert_close(norm(images), norm(images.contiguous()), rtol=1e-6, atol=1e-6)
    assert calls == []


@pytest.mark.skipif(fastpaths.pixels is None, reason=f"chute._pixels: {fastpaths.PIXELS_MISSING}")
def test_the_compiled_pass_refuses_buffers_that_do_not_match() -> None:
    pixels = fastpaths.pixels
    assert pixels is not None
    rgb, floats, co = np.zeros((4, 3), np.uint8), np.zeros((4, 3), np.float32), np.ones(6, np.float32)
    unaligned = np.zeros(13, np.uint8)[1:].view(np.float32)  # 3 float32s starting one byte in
    for src, dst, coefficients, match in [
        (rgb, np.zeros((4, 2), np.float32), co, "one float32 per value"),
        (rgb, np.zeros((4, 3), np.float64), co, "dst must hold float32 values"),
        (rgb, floats, np.ones(5, np.float32), r"scale\[C\] then shift\[C\]"),
        (rgb, floats, np.ones(10, np.float32), "C from 1 to 4"),
        (np.zeros(10, np.uint8), np.zeros(10, np.float32), co, "not a multiple of the channels"),
        (np.zeros(3, np.uint8), unaligned, co[:2], "aligned"),
        (rgb, floats, co.astype(np.float64), "coefficients must hold float32 values"),
        (rgb.view(np.int8), floats, co, "src must hold uint8 values"),
        (rgb, floats.view(np.int32), co, "dst must hold float32 values"),
    ]:
        with pytest.raises(ValueError, match=match):
            pixels.normalize_into(src, dst, coefficients)


@pytest.mark.skipif(fastpaths.pixels is None, reason=f"chute._pixels: {fastpaths.PIXELS_MISSING}")
@pytest.mark.parametrize("level", [1, 2], ids=["avx2", "avx512"])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_the_compiled_pass_gives_the_same_bits_with_streaming_stores(level: int, channels: int) -> None:
    """Outputs from 2 MiB up are written with streaming stores where the CPU has AVX2 or AVX-512:
    after a head of plain stores up to the vector's alignment, whatever the buffer's start, and a
    ragged tail. Every level this CPU offers gives the plain loop's bits (an image's values do not
    depend on its batch's size), and those are the reference values."""
    pixels = fastpaths.pixels
    assert pixels is not None
    default = pixels.set_streaming(9)  # the most this CPU has, which import chose
    try:
        if pixels.set_streaming(level) != level:
            pytest.skip(f"this CPU offers streaming level {default} at most")
        rng = np.random.default_rng(channels)
        scale = rng.uniform(0.5, 20.0, channels).astype(np.float32)
        shift = rng.uniform(-3.0, 3.0, channels).astype(np.float32)
        coefficients = np.concatenate([scale, shift])
        for offset in (0, 1, 5, 13):  # float32s into the buffer: its start moves against the alignment
            for count in (channels * 180_000, channels * 180_000 + channels * 7):  # over 2 MiB of floats
                src = rng.integers(0, 256, count, dtype=np.uint8)
                dst = np.full(count + 32, np.nan, np.float32)[offset : offset + count]
                pixels.set_streaming(level)
                pixels.normalize_into(src, dst, coefficients)
                plain = np.empty(count, np.float32)
                pixels.set_streaming(0)
                pixels.normalize_into(src, plain, coefficients)
                assert np.array_equal(dst, plain)
                expected = (src.reshape(-1, channels) * scale + shift).astype(np.float32)  # rounded twice too
                assert np.array_equal(dst.reshape(-1, channels), expected)
    finally:
        pixels.set_streaming(default)


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
