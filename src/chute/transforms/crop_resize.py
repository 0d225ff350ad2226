"""Cut, resize and turn many crops of differently sized images in one pass: the GPU decode route's resampler.

nvJPEG returns each image of a batch as its own ``(C, H, W)`` tensor. Cropping and resizing them
one by one would launch a few kernels per image (hundreds per batch, each a few microseconds of a
training thread's time); instead the images are laid end to end in one flat buffer and one kernel
(Triton, on CUDA) writes the whole ``(N, S, S, C)`` batch. Each output pixel averages ``K x K``
bilinear taps spread over its footprint in the source, ``K = ceil(crop side / S)`` per axis (at
most 4): plain bilinear (half-pixel centres, as OpenCV's ``INTER_LINEAR``) when the crop is
enlarged, an antialiased reduction when it is shrunk. Taps stay inside the crop (its edge pixels
repeat), and the square is then transposed and mirrored as :class:`~chute.transforms.fused.StoredRegion`
says. :func:`crop_resize_reference` does the same arithmetic with torch operations, on any device:
the CPU path, and the kernel's test.
"""

from __future__ import annotations

import torch

MAX_TAPS = 4

# Columns of the per-image table: where the image starts in the flat buffer, its size, the crop,
# and the turn of the output square.
BASE, HEIGHT, WIDTH, X, Y, W, H, TRANSPOSE, MIRROR, UPSIDE_DOWN = range(10)


def pack(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``images`` (``(C, H_i, W_i)`` ``uint8``, one device) laid end to end: the flat buffer and each start."""
    sizes = torch.tensor([im.numel() for im in images], dtype=torch.int64)
    starts = torch.cumsum(sizes, 0) - sizes
    return torch.cat([im.reshape(-1) for im in images]), starts  # planar (C, H, W) order


def table(images: list[torch.Tensor], starts: torch.Tensor, crops: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """The ``(N, 10)`` ``int64`` table the resamplers read (on the CPU; the caller moves it)."""
    shapes = torch.tensor([im.shape[-2:] for im in images], dtype=torch.int64).reshape(-1, 2)
    return torch.cat([starts[:, None], shapes, crops.to(torch.int64).cpu(), turns.to(torch.int64).cpu()], dim=1)


def crop_resize(flat: torch.Tensor, rows: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """``(N, size, size, C)`` ``uint8``: each row of ``rows`` (see :func:`table`) cut from ``flat``.

    The Triton kernel on CUDA (one launch), else :func:`crop_resize_reference`. ``rows`` may be on the
    CPU: it is copied to the device without waiting (the caller keeps it alive until the launch).
    """
    n = rows.shape[0]
    out = torch.empty((n, size, size, channels), dtype=torch.uint8, device=flat.device)
    if n == 0:
        return out
    if flat.device.type == "cuda":
        try:
            from chute.transforms._crop_resize_kernel import launch
        except ImportError:  # no Triton (it comes with torch's CUDA builds): the same arithmetic, more kernels
            return crop_resize_reference(flat, rows, size, channels)
        pinned = rows.pin_memory() if not rows.is_cuda else rows  # an asynchronous copy: no wait for the stream
        launch(flat, pinned.to(flat.device, non_blocking=True), out, size, channels, MAX_TAPS)
        return out
    return crop_resize_reference(flat, rows, size, channels)


def crop_resize_reference(flat: torch.Tensor, rows: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """:func:`crop_resize` in torch operations (float32 arithmetic, as the kernel's)."""
    device = flat.device
    r = rows.to(device)
    n = r.shape[0]
    o = torch.arange(size, device=device)
    oy, ox = o.view(1, size, 1), o.view(1, 1, size)
    ty = torch.where(r[:, UPSIDE_DOWN].view(n, 1, 1) > 0, size - 1 - oy, oy).expand(n, size, size)
    tx = torch.where(r[:, MIRROR].view(n, 1, 1) > 0, size - 1 - ox, ox).expand(n, size, size)
    transpose = r[:, TRANSPOSE].view(n, 1, 1) > 0
    u = torch.where(transpose, ty, tx).to(torch.float32)  # column in the resized, unturned square
    v = torch.where(transpose, tx, ty).to(torch.float32)
    col = lambda k: r[:, k].view(n, 1, 1)  # noqa: E731
    x, y, w, h = col(X), col(Y), col(W), col(H)
    scale_x, scale_y = w.to(torch.float32) / size, h.to(torch.float32) / size
    taps_x = torch.ceil(scale_x).clamp(1, MAX_TAPS)
    taps_y = torch.ceil(scale_y).clamp(1, MAX_TAPS)
    acc = torch.zeros((n, size, size, channels), dtype=torch.float32, device=device)
    planes = (col(HEIGHT) * col(WIDTH)).unsqueeze(-1) * torch.arange(channels, device=device)  # (n, 1, 1, C)
    starts = col(BASE).unsqueeze(-1) + planes
    row_width = col(WIDTH)

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return flat[starts + (yy * row_width + xx).unsqueeze(-1)].to(torch.float32)

    for ky in range(int(taps_y.max())):  # the batch's most taps; a row with fewer weighs the rest 0
        y0, y1, fy = _tap(v, ky, taps_y, scale_y, y, h)
        for kx in range(int(taps_x.max())):
            used = ((ky < taps_y) & (kx < taps_x)).to(torch.float32).unsqueeze(-1)
            x0, x1, fx = _tap(u, kx, taps_x, scale_x, x, w)
            top = at(y0, x0) * (1 - fx) + at(y0, x1) * fx
            bottom = at(y1, x0) * (1 - fx) + at(y1, x1) * fx
            acc += (top * (1 - fy) + bottom * fy) * used
    acc /= (taps_x * taps_y).unsqueeze(-1)
    return torch.floor(acc + 0.5).clamp_(0, 255).to(torch.uint8)


def _tap(
    out: torch.Tensor, k: int, taps: torch.Tensor, scale: torch.Tensor, start: torch.Tensor, length: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tap ``k`` of ``taps`` along one axis for output positions ``out``: the two source pixels
    (inside the crop ``[start, start + length)``) and the weight of the second."""
    pos = start + (out + (k + 0.5) / taps) * scale - 0.5
    pos = torch.minimum(torch.maximum(pos, start.to(torch.float32)), (start + length - 1).to(torch.float32))
    first = torch.floor(pos)
    weight = (pos - first).unsqueeze(-1)
    low = first.to(torch.int64)
    return low, torch.minimum(low + 1, start + length - 1), weight
