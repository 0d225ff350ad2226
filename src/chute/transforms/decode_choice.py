"""``decode="auto"``: decode JPEGs where it measures faster, the loader's CPUs or the trainer's GPU.

The CPU route's speed is its per-core rate times the cores its workers get; the GPU route's is
nvJPEG's batched rate (and one resampling pass). Both are measured at ``setup`` on a sample of the
training JPEGs (about a quarter of a second), on the machine and device the run uses, so the
choice holds where the run is: on a 16-core H200 machine nvJPEG decoded ~22k photos/s against
~870 per core (``docs/benchmarks.md``, "On a GPU"), on a many-core host with a small GPU it may not.
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
        return "cpu"
    cores = _cores_per_rank(dm)
    workers = dm.loader_settings.num_workers
    loaders = cores if workers == "auto" else max(1, min(int(workers), cores))
    cpu = _cpu_rate(transform, files) * loaders
    try:
        gpu = _gpu_rate(files, transform.size, device)
    except RuntimeError as err:  # no nvJPEG in this torchvision/TorchCodec build
        log.info("chute: decode=auto: the GPU cannot decode JPEGs here (%s); decoding on the CPU", err)
        return "cpu"
    route: Literal["cpu", "gpu"] = "gpu" if gpu > cpu else "cpu"
    dm.decode_report = {"cpu_img_s": round(cpu), "gpu_img_s": round(gpu), "loaders": loaders, "route": route}
    log.info(
        "chute: decode=auto chose %s: the GPU decodes ~%d images/s, %d CPU loader(s) ~%d (a sample of %d JPEGs)",
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
    from chute.images import read_bytes

    rng = np.random.default_rng(seed)
    picks = rng.permutation(len(index))[: _SAMPLE * 2]
    files = []
    for i in picks:
        try:
            data = read_bytes(index.path(int(i)))
        except Exception:  # a bad file is the loader's to report
            continue
        if data.startswith(b"\xff\xd8\xff"):
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
