"""Images/s of chute's image pipelines vs torchvision's ImageFolder + v1 transforms, side by side.

    python scripts/bench_images.py                      # 2 workers, photos written by PhotoFolder
    python scripts/bench_images.py --workers 0 1 2 --epochs 3
    python scripts/bench_images.py --device cuda --workers 0 4 8   # what a GPU receives

Workload: ~1,800 JPEG photographs 400-640 px wide (quality 90) written once into data/photos from
scikit-image's bundled sample photos; RandomResizedCrop(224) + horizontal flip; batch 64.

- baseline: ``torchvision.datasets.ImageFolder`` with ``RandomResizedCrop, RandomHorizontalFlip,
  ToTensor, Normalize`` in a plain DataLoader (persistent workers);
- chute on the fly: ``ImageFolderDataModule`` with ``create_transforms(image_size=224)``: JPEGs
  decoded straight to the random crop (``chute.transforms.fused``: libjpeg-turbo DCT scaling, only
  the crop's rows and columns), one resize, uint8 batches gathered without a collate step;
  ``--fast-decode off`` measures the generic path instead (TorchCodec decode + v2 transforms);
- chute precomputed: ``ImageFolderDataModule(cache="disk", cache_size=256, device_augment=True)``:
  batches gathered whole from a memory-mapped uint8 cache; crop and flip run in the batch hook.
- ``... threads``: the same DataModule with ``loader.backend=threads``: N loader threads in this
  process instead of N worker processes (decoding and gathers release the GIL; no IPC).

Two figures per pipeline, after one warm-up epoch (median of ``--epochs`` rounds, each of whole
passes for at least ``--span`` seconds):

- **model receives** (the headline): images/s of the batches a model on this CPU gets, normalized
  ``float32`` 224 px crops, as under ``Trainer(accelerator="cpu")``: chute's DataModule sees a CPU
  trainer, so its batch hook (uint8 -> normalized float; for the precomputed path also the crop and
  flip) runs inside the loader's workers or threads, and ``on_after_batch_transfer`` is called on
  every batch as Lightning calls it. The baseline's batches are normalized float crops already.
  With ``--device cuda`` the model is on the GPU: every batch is copied there as Lightning copies
  it (``move_data_to_device``, pinned host memory, ``non_blocking``) and chute's hook runs on the
  device after the copy (threads copy on a side stream themselves); the clock stops after
  ``torch.cuda.synchronize()``. The baseline's DataLoader pins memory as a GPU user's would.
- **loader only**: images/s of ``train_dataloader()`` with no trainer attached, chute's batches
  still ``uint8`` (on a GPU the hook runs on the device after the copy).

The precomputed path's cache keeps each photo's centre square at 256 px (``SquareResize``), so its
crops are drawn from that square, not from the whole photo as the baseline's and the on-the-fly
path's are: the same per-image work, a different view of each photo. Writes JSON, CSV and PNG to
outputs/benchmarks/.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from benchlib import count, rate, write_results
from chute.datamodules import ImageFolderDataModule
from chute.datasets import PhotoFolder
from chute.transforms import create_transforms

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def measure(loader: Iterable[Any], epochs: int, hook: Callable[[Any], Any] | None = None, span: float = 2.0) -> float:
    """Median over ``epochs`` rounds of images/s, each round whole passes for at least ``span`` seconds.

    One pass of the precomputed paths takes 0.1-0.4 s here, too short to time alone (single passes
    of the same loader read 4,000-33,000 img/s), so each round times passes back to back, with the
    epoch boundaries a training run has."""
    rate(loader, hook)  # warm-up epoch: worker start-up, page cache, cache build
    rounds = []
    for _ in range(epochs):
        start, images = time.perf_counter(), 0.0
        while (elapsed := time.perf_counter() - start) < span:
            images += count(loader, hook)
        rounds.append(images / elapsed)
    return statistics.median(rounds)


def baseline_loader(root: Path, workers: int, batch_size: int, pin_memory: bool = False) -> DataLoader[Any]:
    from torchvision import datasets
    from torchvision import transforms as T

    pipeline = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    dataset = datasets.ImageFolder(str(root / "train"), transform=pipeline)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0,
        pin_memory=pin_memory,
    )  # fmt: skip


def chute_module(
    root: Path, workers: int, batch_size: int, cache_dir: str | None, backend: str = "torch", fast_decode: bool = True,
    cls: type[ImageFolderDataModule] = ImageFolderDataModule, **extra: Any,
) -> ImageFolderDataModule:  # fmt: skip
    """chute's DataModule for the photo workload (``cls``/``extra``: a subclass and its own arguments)."""
    t = create_transforms(image_size=224, crop_pct=0.875, fast_decode=fast_decode)
    if cache_dir is not None:
        extra = {**extra, "cache": "disk", "cache_size": 256, "cache_dir": cache_dir, "device_augment": True}
    dm = cls(
        root, train_transform=t.train, val_transform=t.val, train_batch_transform=t.train_batch, mean=MEAN, std=STD,
        loader={"batch_size": batch_size, "num_workers": workers, "backend": backend}, **extra,
    )  # fmt: skip
    dm.setup("fit")
    return dm


class _Strategy:
    def __init__(self, device: torch.device) -> None:
        self.root_device = device


class _FitTrainer:
    """What Lightning's ``Trainer`` on ``device`` looks like to a DataModule during fit."""

    training = True
    global_rank, world_size, current_epoch = 0, 1, 0

    def __init__(self, device: torch.device) -> None:
        self.strategy = _Strategy(device)


def to_device(device: torch.device) -> Callable[[Any], Any]:
    """Lightning's copy of a batch to the model's device (a no-op on the CPU)."""
    from lightning.fabric.utilities.apply_func import move_data_to_device

    return lambda batch: batch if device.type == "cpu" else move_data_to_device(batch, device)


def on_trainer(dm: ImageFolderDataModule, device: torch.device) -> tuple[Any, Callable[[Any], Any]]:
    """The training loader a trainer on ``device`` gets, and what it does to each batch."""
    dm.trainer = _FitTrainer(device)  # type: ignore[assignment]
    copy = to_device(device)
    return dm.train_dataloader(), lambda batch: dm.on_after_batch_transfer(copy(batch), 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("data/photos"))
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2, help="timed rounds (median); each at least --span s")
    parser.add_argument("--span", type=float, default=2.0, help="seconds of whole passes per timed round")
    parser.add_argument(
        "--cases",
        nargs="+",
        default=["baseline", "onthefly", "onthefly-threads", "precomputed", "precomputed-threads"],
        help="pipelines to run, in this order",
    )
    parser.add_argument("--fast-decode", choices=["on", "off"], default="on", help="crop-aware JPEG decoding")
    parser.add_argument("--device", default="cpu", help="where the model is: cpu, or cuda for a GPU")
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"))
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.init()

    root = PhotoFolder()(args.root)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as cache_dir:
        for workers in args.workers:
            known: dict[str, tuple[str, str | None, bool]] = {
                "baseline": ("torchvision baseline", None, False),
                "onthefly": ("chute on the fly", None, True),
                "onthefly-threads": ("chute on the fly, threads", None, True),
                "precomputed": ("chute precomputed", cache_dir, True),
                "precomputed-threads": ("chute precomputed, threads", cache_dir, True),
            }
            for label, cache, is_dm in (known[c] for c in args.cases):
                backend = "threads" if label.endswith("threads") else "torch"
                if backend == "threads" and workers == 0:
                    continue  # zero threads is the same as the main-process DataLoader
                torch.manual_seed(0)
                made: Any = (
                    chute_module(root, workers, args.batch_size, cache, backend, args.fast_decode == "on")
                    if is_dm
                    else baseline_loader(root, workers, args.batch_size, pin_memory=device.type == "cuda")
                )
                loader = made.train_dataloader() if is_dm else made
                os.sync()  # a just-built cache is still being written back to disk; don't time that
                row: dict[str, Any] = {"label": f"{label}\n{workers} workers", "case": label, "num_workers": workers}
                row["loader_img_per_s"] = round(measure(loader, args.epochs, span=args.span))
                if is_dm:
                    del loader  # its workers go before the CPU-trainer loader starts its own
                    loader, hook = on_trainer(made, device)
                    row["model_img_per_s"] = round(measure(loader, args.epochs, hook, args.span))
                elif device.type == "cpu":
                    row["model_img_per_s"] = row["loader_img_per_s"]  # already normalized floats, in place
                else:
                    row["model_img_per_s"] = round(measure(loader, args.epochs, to_device(device), args.span))
                rows.append(row)
                print(f"  measured: {label}, {workers} workers: model receives {row['model_img_per_s']:,} img/s, "
                      f"loader only {row['loader_img_per_s']:,} img/s", flush=True)  # fmt: skip
                del loader, made
    for row in rows:
        base = next(
            (r for r in rows if r["num_workers"] == row["num_workers"] and r["case"] == "torchvision baseline"), None
        )
        nan = float("nan")
        row["model_vs_baseline"] = round(row["model_img_per_s"] / base["model_img_per_s"], 2) if base else nan
        row["loader_vs_baseline"] = round(row["loader_img_per_s"] / base["loader_img_per_s"], 2) if base else nan
        print(
            f"{row['case']:>26} | {row['num_workers']} workers | model receives {row['model_img_per_s']:>6,} img/s "
            f"({row['model_vs_baseline']:.2f}x) | loader only {row['loader_img_per_s']:>6,} img/s "
            f"({row['loader_vs_baseline']:.2f}x)"
        )
    where = "" if device.type == "cpu" else f"_{device.type}"
    stem = args.out / f"images{where}_w{'-'.join(map(str, args.workers))}"
    write_results(stem, vars(args), rows, "model_img_per_s", f"photos, 224 px crops, batch {args.batch_size}, {device}")


if __name__ == "__main__":
    main()
