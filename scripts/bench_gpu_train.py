"""Does the loader keep a real GPU busy? A ResNet trained through Lightning, fed by each loader in turn.

    python scripts/bench_gpu_train.py                              # on a CUDA machine: the full comparison
    python scripts/bench_gpu_train.py --models resnet18 --loaders alone chute
    python scripts/bench_gpu_train.py --images 256 --epochs 2      # a dry run on the CPU (fp32, no timm)

Workload (issue 25): ``--images`` photo JPEGs 400-640 px wide (``PhotoFolder``, written in parallel,
~4 s on 16 cores), ``RandomResizedCrop(224)`` + horizontal flip, batch 128, ``--workers`` loader
processes (default: all cores but one). Each case is a real ``lightning.Trainer`` fit (bf16-mixed
on CUDA, channels-last, SGD with momentum, no validation) of a torchvision ResNet for ``--epochs``
epochs; images/s are counted over every epoch after the first, from the end of the previous epoch
(the device synchronized) to the end of the epoch, so start-up is left out and every epoch's own
ramp is in. Loaders, all in this one process, one after another:

- ``alone``: the model's own speed: one batch kept on the GPU, handed to every step;
- ``torchvision``: ``ImageFolder`` + v1 transforms (``ToTensor``, ``Normalize``) in a ``DataLoader``
  with pinned memory and persistent workers, what a user writes first;
- ``timm``: ``timm.data.create_loader`` with its GPU prefetcher (normalization on the GPU), no
  colour jitter or random erasing, so the augmentations match;
- ``chute``: ``ImageFolderDataModule(root)`` with default settings (``decode="auto"``: the route
  it picks is printed), ``loader.num_workers`` as the others;
- ``chute-cpu`` / ``chute-gpu``: the same with ``decode`` forced, to see both routes;
- ``chute-threads``: ``decode="auto"`` with ``loader.backend=threads``;
- ``chute-cache``: the precomputed route: ``cache="disk", cache_size=256, device_augment=True``
  (decoded once into a memory-mapped cache; crop and flip of whole batches on the device);
- ``chute-auto``: ``loader.num_workers=auto`` (the autotuner picks workers or threads; printed).

Each row: images/s, the share of the model's own speed (``alone``), and the loader alone (its
training loader iterated for one epoch with the batch hook on the device, no model). Prints a
table (and ``decode=auto``'s choice) and writes JSON/CSV/PNG to ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from benchlib import rate, write_results

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ALL = ["alone", "torchvision", "timm", "chute", "chute-cpu", "chute-gpu", "chute-threads", "chute-cache", "chute-auto"]


class Classifier(L.LightningModule):
    def __init__(self, arch: str, num_classes: int, channels_last: bool) -> None:
        super().__init__()
        import torchvision

        self.net = getattr(torchvision.models, arch)(num_classes=num_classes)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, labels = batch[0], batch[1]
        return F.cross_entropy(self.net(images), labels)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)


class EpochClock(L.Callback):
    """Images/s of each epoch after the first (device synchronized at both ends), and where its
    time went on the training thread: the wait for the first batch (the loader's ramp at an epoch's
    start), the waits between steps, the steps themselves (host time: launching, and blocking
    when the device's queue is full), and the epoch's end (the device finishing its queue)."""

    def __init__(self) -> None:
        self.rates: list[float] = []
        self.parts: list[dict[str, float]] = []
        self._start = self._last = self._begin = 0.0
        self._images = 0
        self._ramp = self._wait = self._step = 0.0

    def _now(self) -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start, self._images = self._now(), 0
        self._last, self._ramp, self._wait, self._step = self._start, -1.0, 0.0, 0.0

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, i: int) -> None:
        self._begin = time.perf_counter()
        if self._ramp < 0:
            self._ramp = self._begin - self._start
        else:
            self._wait += self._begin - self._last

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        self._images += len(batch[1])
        self._last = time.perf_counter()
        self._step += self._last - self._begin

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        end = self._now()
        if trainer.current_epoch > 0:
            self.rates.append(self._images / (end - self._start))
            ms = {"ramp": self._ramp, "waits": self._wait, "steps": self._step, "end": end - self._last}
            self.parts.append({k: round(1000 * v, 1) for k, v in ms.items()})


class KeptBatch:
    """``batches`` steps of one batch already on the device: the model's own speed."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batches: int) -> None:
        self.images, self.labels, self.batches = images, labels, batches

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Any:
        return ((self.images, self.labels) for _ in range(self.batches))


def trainer(epochs: int, clock: EpochClock) -> L.Trainer:
    cuda = torch.cuda.is_available()
    return L.Trainer(
        accelerator="gpu" if cuda else "cpu", devices=1, precision="bf16-mixed" if cuda else "32-true",
        max_epochs=epochs, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[clock], benchmark=cuda,
    )  # fmt: skip


def torchvision_loader(train: Path, workers: int, batch_size: int) -> Any:
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision import transforms as T

    pipeline = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    dataset = datasets.ImageFolder(str(train), transform=pipeline)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0, drop_last=True,
    )  # fmt: skip


def timm_loader(train: Path, workers: int, batch_size: int) -> Any:
    from timm.data import ImageDataset, create_loader

    return create_loader(
        ImageDataset(str(train)), input_size=(3, 224, 224), batch_size=batch_size, is_training=True,
        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5, color_jitter=0.0, re_prob=0.0,
        interpolation="bilinear", mean=MEAN, std=STD, num_workers=workers, pin_memory=True,
        use_prefetcher=True, persistent_workers=workers > 0,
    )  # fmt: skip


def chute_module(root: Path, case: str, workers: int, batch_size: int) -> Any:
    from chute.datamodules import ImageFolderDataModule
    from chute.transforms import create_transforms

    decode: Any = {"chute-cpu": "cpu", "chute-gpu": "gpu"}.get(case, "auto")
    backend = "threads" if case == "chute-threads" else "torch"
    loader = {"batch_size": batch_size, "num_workers": "auto" if case == "chute-auto" else workers}
    loader |= {"backend": backend, "drop_last": True}
    extra: dict[str, Any] = {}
    if case == "chute-cache":
        extra = {"cache": "disk", "cache_size": 256, "device_augment": True}
        t = create_transforms(image_size=224)
        extra |= {"train_transform": t.train, "val_transform": t.val, "train_batch_transform": t.train_batch}
    return ImageFolderDataModule(root, mean=list(MEAN), std=list(STD), loader=loader, decode=decode, **extra)


def shut_down(loader: Any) -> None:
    """End a loader's persistent worker processes now (not in a later case's forked workers)."""
    for candidate in (loader, getattr(loader, "loader", None)):
        running = getattr(candidate, "_iterator", None)
        if running is not None and hasattr(running, "_shutdown_workers"):
            running._shutdown_workers()


def run_case(case: str, arch: str, args: argparse.Namespace, root: Path, classes: int) -> dict[str, Any]:
    torch.manual_seed(0)
    clock = EpochClock()
    fit = trainer(args.epochs, clock)
    model = Classifier(arch, classes, channels_last=True)
    row: dict[str, Any] = {"model": arch, "loader": case, "label": f"{arch}\n{case}"}
    batches = args.images // args.batch_size
    loader: Any = None
    if case == "alone":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        images = torch.randn(args.batch_size, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, classes, (args.batch_size,), device=device)
        fit.fit(model, train_dataloaders=KeptBatch(images, labels, batches))
    elif case in ("torchvision", "timm"):
        make = torchvision_loader if case == "torchvision" else timm_loader
        loader = make(root / "train", args.workers, args.batch_size)
        fit.fit(model, train_dataloaders=loader)
        rate(loader)  # the workers' start (Lightning shut them down after the fit)
        row["loader_img_s"] = round(rate(loader))
    else:
        dm = chute_module(root, case, args.workers, args.batch_size)
        fit.fit(model, datamodule=dm)
        row["route"] = dm.decode_route
        row["decode_auto"] = getattr(dm, "decode_report", None)
        if dm.tuned_loader is not None:
            row["autotuned"] = f"{dm.tuned_loader.backend} {dm.tuned_loader.num_workers}"
        loader = dm._train_loader
        fit.training = True  # the hook as in training (the fit is over): normalize unless the loader did
        hook = lambda b: dm.on_after_batch_transfer(_to_device(b), 0)  # noqa: E731
        rate(loader, hook)  # the workers' start (Lightning shut them down after the fit)
        row["loader_img_s"] = round(rate(loader, hook))
    row["img_s"] = round(statistics.median(clock.rates))
    row["epochs_img_s"] = [round(r) for r in clock.rates]
    row["epoch_ms"] = clock.parts[-1] if clock.parts else {}  # the last epoch: ramp, waits, steps, end
    if loader is not None:
        shut_down(loader)
    del fit, model, loader
    gc.collect()
    return row


def _to_device(batch: Any) -> Any:
    if not torch.cuda.is_available():
        return batch
    from lightning.fabric.utilities.apply_func import move_data_to_device

    return move_data_to_device(batch, torch.device("cuda"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=None, help="default: data/photos-<images>")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--models", nargs="+", default=["resnet50", "resnet18"])
    parser.add_argument("--loaders", nargs="+", default=ALL, choices=ALL)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"))
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True

    from chute.datasets import PhotoFolder

    start = time.perf_counter()
    # ``images`` training photos (and a tenth more for validation, unused here)
    root = PhotoFolder(num_images=args.images * 10 // 9, workers=os.cpu_count() or 1)(
        args.root or Path(f"data/photos-{args.images}")
    )
    print(f"photos ready in {time.perf_counter() - start:.1f} s: {root}", flush=True)
    classes = len([d for d in (root / "train").iterdir() if d.is_dir()])
    loaders = [c for c in args.loaders if c != "timm" or torch.cuda.is_available()]
    rows: list[dict[str, Any]] = []
    for arch in args.models:
        for case in loaders:
            t0 = time.perf_counter()
            row = run_case(case, arch, args, root, classes)
            row["seconds"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            print({k: v for k, v in row.items() if k != "label"}, flush=True)
    for row in rows:
        alone = next((r for r in rows if r["model"] == row["model"] and r["loader"] == "alone"), None)
        row["share_of_model"] = round(row["img_s"] / alone["img_s"], 3) if alone else float("nan")
    print(f"\n{'model':>9} | {'loader':>13} | {'img/s':>7} | share of model | loader only | route | last epoch ms")
    for r in rows:
        print(
            f"{r['model']:>9} | {r['loader']:>13} | {r['img_s']:>7,} | {r['share_of_model']:>14.3f} | "
            f"{r.get('loader_img_s', '-'):>11} | {r.get('route', '')} {r.get('autotuned', '')} | {r['epoch_ms']}"
        )
    write_results(args.out / "gpu_train", vars(args), rows, "img_s", f"ResNet training img/s, batch {args.batch_size}")


if __name__ == "__main__":
    main()
