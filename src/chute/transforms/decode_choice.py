"""``decode="auto"``: decode JPEGs where it measures faster, the loader's CPUs or the trainer's GPU.

The CPU route's capacity is its per-core rate times the cores its workers get; the GPU route's is
nvJPEG's batched rate (and one resampling pass). Both are measured at ``setup`` on a sample of the
training JPEGs (about a quarter of a second), on the machine and device the run uses, so the
choice holds where the run is.

The GPU route is chosen while it measures at least half the CPU route's capacity
(:data:`GPU_SHARE`), not only when it measures more: the CPU capacity is an ideal that training
does not reach. On the 16-core H200 machine (``docs/benchmarks.md``, "Feeding a real GPU") the
sample gave the CPU route 11.5-12.4k images/s against nvJPEG's 10.5-10.9k, yet in training the GPU
route fed ResNet-50 at 0.83 of its speed against 0.72, and ResNet-18 at 0.55 against 0.45-0.47: a
CPU worker needs a whole batch's decoding (~150 ms for 128 photos) before the first batch of every
epoch, and the workers share the machine with the training process.
"""

from __future__ import annotations

import logging
import os
import random
import time
from typing import Any, Literal

import numpy as np
import torch

log = logging.getLogger("chute")

_SAMPLE = 64

#: The GPU route is chosen when its measured rate is at least this share of the CPU route's capacity.
GPU_SHARE = 0.5


def choose_decode(dm: Any) -> Literal["cpu", "gpu"]:
    """``"gpu"`` or ``"cpu"`` for an ``ImageFolderDataModule`` with ``decode="auto"`` (see the module docstring).

    ``"cpu"`` without measuring where the GPU route does not apply: no CUDA trainer attached, a
    cache, grayscale output, transforms that are not crop-aware, a custom collate function.
    Records both rates in ``dm.decode_report``.
    """
    from chute.transforms.fused import CropDecode

    device = getattr(getattr(getattr(dm, "trainer", None), "strategy", None), "root_device", None)
    transform = dm.train_transform
    if (
        device is None or device.type != "cuda" or dm.cache is not None or dm.image_mode != "RGB"
        or not isinstance(transform, CropDecode) or dm.collate_fn is not None
    ):  # fmt: skip
        return "cpu"
    files = _sample_jpegs(dm._split("train"), dm.seed)
    if len(files) < 8:
        dm.decode_report = {"route": "cpu", "why": f"only {len(files)} JPEGs the GPU decodes in a sample"}
        return "cpu"
    cores = _cores_per_rank(dm)
    workers = dm.loader_settings.num_workers
    loaders = cores if workers == "auto" else max(1, min(int(workers), cores))
    cpu = _cpu_rate(transform, files) * loaders
    try:
        gpu = _gpu_rate(files, transform.size, device)
    except RuntimeError as err:  # no nvJPEG in this torchvision/TorchCodec build
        log.info("chute: decode=auto: the GPU cannot decode JPEGs here (%s); decoding on the CPU", err)
        dm.decode_report = {"route": "cpu", "why": f"nvJPEG failed: {err}"}
        return "cpu"
    route: Literal["cpu", "gpu"] = "gpu" if gpu >= GPU_SHARE * cpu else "cpu"
    dm.decode_report = {"cpu_img_s": round(cpu), "gpu_img_s": round(gpu), "loaders": loaders, "route": route}
    log.info(
        "chute: decode=auto chose %s: the GPU decodes ~%d images/s, %d CPU loader(s) at most ~%d (a sample of %d "
        "JPEGs; the GPU is chosen from half the CPU's rate up)",
        route, gpu, loaders, cpu, len(files),
    )  # fmt: skip
    return route


def _cores_per_rank(dm: Any) -> int:
    """Cores one rank's loader may use: this machine's, shared by its ranks, one kept for training."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    ranks = max(1, int(getattr(dm.trainer, "num_devices", 1) or 1))
    return max(1, cpus // ranks - 1)


def _sample_jpegs(index: Any, seed: int) -> list[bytes]:
    """Up to 64 training files the GPU route decodes on the device (JPEGs with a sound header and
    end marker, not CMYK: what ``EncodedBatchWriter.takes``), in a seeded sample."""
    from chute.images import check_image_size, read_bytes
    from chute.transforms.fused import _JPEG_MAGIC

    rng = np.random.default_rng(seed)
    picks = rng.permutation(len(index))[: _SAMPLE * 2]
    files = []
    for i in picks:
        try:
            data = read_bytes(index.path(int(i)))
        except Exception:  # a bad file is the loader's to report
            continue
        try:
            header = check_image_size("", data) if data.startswith(_JPEG_MAGIC) else None
        except Exception:
            header = None
        if header is not None:
            files.append(data)
        if len(files) == _SAMPLE:
            break
    return files


def _cpu_rate(transform: Any, files: list[bytes]) -> float:
    """Images/s of the CPU route's crop-aware decode on one thread."""
    out = np.empty((transform.size, transform.size, 3), dtype=np.uint8)
    rng = random.Random(0)
    transform.decode_into(files[0], out, rng=rng)  # warm-up
    start = time.perf_counter()
    for data in files:
        transform.decode_into(data, out, rng=rng)
    return len(files) / (time.perf_counter() - start)


def _gpu_rate(files: list[bytes], size: int, device: torch.device) -> float:
    """Images/s of the GPU route on ``device``: one batched nvJPEG call and the resampling pass."""
    from chute.transforms.crop_resize import crop_resize, pack, table
    from chute.transforms.device_decode import _nvjpeg

    tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in files]

    def once() -> None:
        images = _nvjpeg(tensors, device)
        crops = torch.tensor([[0, 0, im.shape[-1], im.shape[-2]] for im in images])
        flat, starts = pack(images)
        crop_resize(flat, table(images, starts, crops, torch.zeros((len(images), 3))), size, 3)

    with torch.cuda.device(device):
        once()  # warm-up: the decoder's set-up, the kernel's compilation
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(2):
            once()
        torch.cuda.synchronize(device)
    return 2 * len(files) / (time.perf_counter() - start)
