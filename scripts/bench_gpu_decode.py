"""What a GPU machine can decode: nvJPEG batches against the model's step, and the CPUs per core.

    python scripts/bench_gpu_decode.py --out outputs/gpu      # on a CUDA machine

Measures, on the photo folder of ``scripts/bench_gpu_train.py`` (PhotoFolder, 400-640 px JPEGs):

1. the machine: CPUs, threads per core (``lscpu``), GPU;
2. nvJPEG through ``torchvision.io.decode_jpeg(list, device="cuda")``: images/s for batches of
   128 (bytes already in memory), alone;
3. the model alone (ResNet-50 and ResNet-18, bf16 autocast, channels_last, SGD, batch 128, one
   batch kept on the GPU) and the same training steps while another thread decodes nvJPEG batches:
   how much of the GPU the decoder takes from the model;
4. chute's crop-aware CPU decode on one thread (images/s), the per-core figure the CPU route scales.

Prints a table and writes ``gpu_decode.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch


def _lscpu() -> dict[str, str]:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    keep = ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "Socket(s)", "L3 cache")
    return {
        k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if k.strip() in keep
    }


def _nvjpeg(batch: list[torch.Tensor]) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 deprecates its decoders for TorchCodec's
        return decode_jpeg(batch, mode=ImageReadMode.RGB, device="cuda")


def decode_rate(batches: list[list[torch.Tensor]], seconds: float) -> float:
    for batch in batches[:2]:
        _nvjpeg(batch)
    torch.cuda.synchronize()
    start, images, i = time.perf_counter(), 0, 0
    while time.perf_counter() - start < seconds:
        images += len(_nvjpeg(batches[i % len(batches)]))
        i += 1
    torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def model_rate(name: str, seconds: float, decoding: list[list[torch.Tensor]] | None = None) -> tuple[float, float]:
    """Training images/s of ``name`` on one kept batch; with ``decoding``, while a thread decodes them
    on another stream (returns the decoder's images/s too)."""
    import torchvision

    model = getattr(torchvision.models, name)(num_classes=1000).cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(128, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (128,), device="cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    stop = threading.Event()
    decoded = [0]

    def decode() -> None:
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            i = 0
            while not stop.is_set() and decoding:
                decoded[0] += len(_nvjpeg(decoding[i % len(decoding)]))
                i += 1
            stream.synchronize()

    thread = threading.Thread(target=decode, daemon=True)
    if decoding:
        thread.start()
        time.sleep(0.5)
    start, steps = time.perf_counter(), 0
    d0 = decoded[0]
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
        if steps % 10 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    d1 = decoded[0]
    stop.set()
    if decoding:
        thread.join()
    return steps * 128 / wall, (d1 - d0) / wall


def cpu_decode_rate(paths: list[str], seconds: float) -> float:
    import random

    import numpy as np

    from chute.images import read_bytes
    from chute.transforms.fused import RandomResizedCropDecode

    t = RandomResizedCropDecode(224)
    out = np.empty((224, 224, 3), dtype=np.uint8)
    data = [read_bytes(p) for p in paths]
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        t.decode_into(data[n % len(data)], out, rng=random.Random(n))
        n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("data/photos-4096"))
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=Path("outputs/gpu"))
    args = parser.parse_args()
    from chute.datasets import PhotoFolder

    start = time.perf_counter()
    root = PhotoFolder(num_images=args.images, workers=os.cpu_count() or 1)(args.root)
    result: dict[str, Any] = {"photos_written_s": round(time.perf_counter() - start, 1), "lscpu": _lscpu()}
    result["cpus"] = os.cpu_count()
    paths = sorted(str(p) for p in (root / "train").glob("*/*.jpg"))
    result["cpu_crop_decode_img_s_one_thread"] = round(cpu_decode_rate(paths[:512], args.seconds))
    print(result, flush=True)
    if torch.cuda.is_available():
        result["gpu"] = torch.cuda.get_device_name(0)
        tensors = [torch.frombuffer(bytearray(Path(p).read_bytes()), dtype=torch.uint8) for p in paths[:1024]]
        batches = [tensors[i : i + 128] for i in range(0, len(tensors), 128)]
        result["nvjpeg_img_s"] = round(decode_rate(batches, args.seconds))
        print(result, flush=True)
        for name in ("resnet50", "resnet18"):
            alone, _ = model_rate(name, args.seconds)
            shared, decoded = model_rate(name, args.seconds, batches)
            result[name] = {
                "alone_img_s": round(alone),
                "with_nvjpeg_img_s": round(shared),
                "nvjpeg_meanwhile_img_s": round(decoded),
                "share_kept": round(shared / alone, 3),
            }
            print(name, result[name], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_decode.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
