"""The Triton kernel behind :func:`chute.transforms.crop_resize.crop_resize` on CUDA.

One program per output row ``(n, oy)``: every column and channel of that row, each the average of
the crop's ``K x K`` bilinear taps (the arithmetic of ``crop_resize_reference``, which the tests
compare it with under ``TRITON_INTERPRET=1``). Imported only where a CUDA batch is resampled.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _tap(out, k, taps, scale, start, length, low, high):  # pragma: no cover - see _crop_resize
    """Tap ``k`` along one axis: the two source pixels inside the crop and the second's weight."""
    pos = start + (out + (k + 0.5) / taps) * scale - 0.5
    pos = tl.minimum(tl.maximum(pos, low), high)
    first = tl.floor(pos)
    near = first.to(tl.int64)
    return near, tl.minimum(near + 1, start + length - 1), pos - first


@triton.jit
def _crop_resize(
    flat,
    rows,
    out,
    size,
    CHANNELS: tl.constexpr,  # noqa: N803 - Triton's convention: compile-time constants in capitals
    MAX_TAPS: tl.constexpr,  # noqa: N803
    BLOCK: tl.constexpr,  # noqa: N803
):  # pragma: no cover - runs on the GPU (or Triton's interpreter in the tests)
    pid = tl.program_id(0)
    n = pid // size
    oy = pid % size
    meta = rows + n * 10
    base = tl.load(meta + 0)
    width = tl.load(meta + 2)
    x = tl.load(meta + 3)
    y = tl.load(meta + 4)
    w = tl.load(meta + 5)
    h = tl.load(meta + 6)
    transpose = tl.load(meta + 7) > 0
    mirror = tl.load(meta + 8) > 0
    upside_down = tl.load(meta + 9) > 0
    plane = tl.load(meta + 1) * width

    ox = tl.arange(0, BLOCK)
    inside = ox < size
    ty = tl.where(upside_down, size - 1 - oy, oy) + 0 * ox
    tx = tl.where(mirror, size - 1 - ox, ox)
    u = tl.where(transpose, ty, tx).to(tl.float32)
    v = tl.where(transpose, tx, ty).to(tl.float32)
    scale_x = w.to(tl.float32) / size
    scale_y = h.to(tl.float32) / size
    taps_x = tl.minimum(tl.maximum(tl.ceil(scale_x), 1.0), MAX_TAPS * 1.0)
    taps_y = tl.minimum(tl.maximum(tl.ceil(scale_y), 1.0), MAX_TAPS * 1.0)
    taps_xi = taps_x.to(tl.int32)
    taps_yi = taps_y.to(tl.int32)
    x_lo = x.to(tl.float32)
    x_hi = (x + w - 1).to(tl.float32)
    y_lo = y.to(tl.float32)
    y_hi = (y + h - 1).to(tl.float32)

    for c in tl.static_range(CHANNELS):
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for ky in tl.static_range(MAX_TAPS):
            y0, y1, fy = _tap(v, ky, taps_y, scale_y, y, h, y_lo, y_hi)
            for kx in tl.static_range(MAX_TAPS):
                used = (taps_yi > ky) & (taps_xi > kx)
                x0, x1, fx = _tap(u, kx, taps_x, scale_x, x, w, x_lo, x_hi)
                start = base + c * plane
                load = inside & (ox * 0 + used.to(tl.int32) > 0)
                p00 = tl.load(flat + start + y0 * width + x0, mask=load, other=0).to(tl.float32)
                p01 = tl.load(flat + start + y0 * width + x1, mask=load, other=0).to(tl.float32)
                p10 = tl.load(flat + start + y1 * width + x0, mask=load, other=0).to(tl.float32)
                p11 = tl.load(flat + start + y1 * width + x1, mask=load, other=0).to(tl.float32)
                top = p00 * (1 - fx) + p01 * fx
                bottom = p10 * (1 - fx) + p11 * fx
                acc += tl.where(load, top * (1 - fy) + bottom * fy, 0.0)
        value = tl.floor(acc / (taps_x * taps_y) + 0.5)
        value = tl.minimum(tl.maximum(value, 0.0), 255.0)
        tl.store(out + (pid * size + ox) * CHANNELS + c, value.to(tl.uint8), mask=inside)


def launch(flat: torch.Tensor, rows: torch.Tensor, out: torch.Tensor, size: int, channels: int, taps: int) -> None:
    """Fill ``out`` (``(N, size, size, channels)`` ``uint8``) from ``flat`` as ``rows`` says."""
    block = triton.next_power_of_2(size)
    _crop_resize[(rows.shape[0] * size,)](flat, rows, out, size, CHANNELS=channels, MAX_TAPS=taps, BLOCK=block)
