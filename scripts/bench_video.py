"""Clips/s of chute's VideoDataModule vs the video loader a user writes first, side by side.

    python scripts/bench_video.py                       # 0 and 2 workers, videos written by MotionClips
    python scripts/bench_video.py --workers 0 2 --epochs 3

Workload: the bundled motion videos (``MotionClips``: 360 videos, 2-6 s at 12-30 fps, 64-96 px,
H.264 / VP9 / MPEG-4 in mp4, mkv, webm and avi, a keyframe every 2 s), training split; clips of 8
frames at 8 per second of video from a random start (the default run's clips), a random resized
crop to 32 px per clip; batch 16.

- baseline: a ``Dataset`` that opens the video with PyAV (the same decoder), decodes every frame
  to RGB, keeps the clip's frames, applies torchvision v2 ``RandomResizedCrop`` to the clip
  (one draw for all its frames), converts to float and normalizes; a plain DataLoader
  (persistent workers).
- chute: ``VideoDataModule``: the packet table read once at setup; per clip one seek to the
  keyframe before its first frame, decoding until its last, RGB conversion of the clip's frames
  only, one OpenCV resize over the stacked frames; ``uint8`` on the wire, normalized by the batch
  hook (in the loader's workers, as under a CPU trainer). ``threads``: the same with loader threads.

Two figures per pipeline, the median over ``--epochs`` after a warm-up epoch: **model receives**
(normalized float clips, chute's hook applied as Lightning applies it under a CPU trainer) and
**loader only** (chute's ``uint8`` batches). With workers, each worker process's resident memory
(RSS, from /proc) is recorded after every epoch, to show it stays flat. Writes JSON, CSV and PNG
to outputs/benchmarks/.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from benchlib import rate, write_results
from chute.datamodules import VideoDataModule
from chute.datasets import MotionClips
from chute.datasets.folder_index import scan_folder
from chute.datasets.video import VIDEO_EXTENSIONS

FRAMES, FPS, SIZE = 8, 8.0, 32
MEAN, STD = [0.45, 0.45, 0.45], [0.225, 0.225, 0.225]


class WholeVideoClips(Dataset[Any]):
    """What a user writes first: decode the whole video with PyAV, then pick the clip's frames."""

    def __init__(self, root: Path) -> None:
        from torchvision.transforms import v2

        index = scan_folder(root, extensions=VIDEO_EXTENSIONS, what="videos")
        self.paths = [index.path(i) for i in range(len(index))]
        self.labels = index.targets.tolist()
        self.transform = v2.Compose([
            v2.RandomResizedCrop(SIZE, scale=(0.5, 1.0), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ])  # fmt: skip

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        import av

        with av.open(self.paths[i]) as container:
            rate = float(container.streams.video[0].average_rate or 25)
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        step = rate / FPS
        span = round((FRAMES - 1) * step) + 1
        start = random.randint(0, max(len(frames) - span, 0))
        picks = [min(start + round(k * step), len(frames) - 1) for k in range(FRAMES)]
        clip = torch.from_numpy(np.stack([frames[k] for k in picks])).permute(0, 3, 1, 2)  # (T, C, H, W)
        return self.transform(clip), self.labels[i]


def worker_rss_mib() -> list[float]:
    """Resident memory of this process's child processes (DataLoader workers), MiB."""
    me = os.getpid()
    children = []
    for task in Path(f"/proc/{me}/task").iterdir():
        try:
            children += (task / "children").read_text().split()
        except FileNotFoundError:  # a loader thread that ended since the listing
            continue
    rss = []
    for pid in children:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue
        kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        rss.append(round(kib / 1024, 1))
    return rss


def measure(loader: Iterable[Any], epochs: int, hook: Callable[[Any], Any] | None = None) -> tuple[float, list[Any]]:
    rate(loader, hook)  # warm-up epoch: worker start-up, page cache
    rates, memory = [], [worker_rss_mib()]
    for _ in range(epochs):
        rates.append(rate(loader, hook))
        memory.append(worker_rss_mib())
    return statistics.median(rates), memory


class _Strategy:
    root_device = torch.device("cpu")


class _FitTrainer:
    """What Lightning's ``Trainer`` on the CPU looks like to a DataModule during fit."""

    training = True
    global_rank, world_size, current_epoch = 0, 1, 0
    strategy = _Strategy()


def chute_module(root: Path, workers: int, batch_size: int, backend: str) -> VideoDataModule:
    dm = VideoDataModule(
        root, frames_per_clip=FRAMES, fps=FPS, mean=MEAN, std=STD,
        transforms={"image_size": SIZE, "scale": [0.5, 1.0], "hflip": 0.0},
        loader={"batch_size": batch_size, "num_workers": workers, "backend": backend},
    )  # fmt: skip
    dm.setup("fit")
    return dm


def _hook(dm: VideoDataModule) -> Callable[[Any], Any]:
    return lambda batch: dm.on_after_batch_transfer(batch, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("data/motion"))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cases", nargs="+", default=["baseline", "chute", "chute-threads"])
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"))
    args = parser.parse_args()
    root = MotionClips()(args.root)
    rows: list[dict[str, Any]] = []
    for workers in args.workers:
        for case in args.cases:
            if case == "chute-threads" and workers == 0:
                continue  # zero threads is the main-process loader
            torch.manual_seed(0)
            random.seed(0)
            row: dict[str, Any] = {"label": f"{case}\n{workers} workers", "case": case, "num_workers": workers}
            if case == "baseline":
                loader: Any = DataLoader(
                    WholeVideoClips(root / "train"), batch_size=args.batch_size, shuffle=True, num_workers=workers,
                    persistent_workers=workers > 0,
                )  # fmt: skip
                row["model_clips_per_s"], memory = measure(loader, args.epochs)
                row["loader_clips_per_s"] = row["model_clips_per_s"]  # normalized floats already
            else:
                dm = chute_module(root, workers, args.batch_size, "threads" if case.endswith("threads") else "torch")
                loader = dm.train_dataloader()
                row["loader_clips_per_s"], _ = measure(loader, args.epochs)
                del loader
                dm.trainer = _FitTrainer()  # type: ignore[assignment]
                loader = dm.train_dataloader()  # a CPU trainer's loader: the hook runs in its workers
                row["model_clips_per_s"], memory = measure(loader, args.epochs, _hook(dm))
            row["worker_rss_mib_per_epoch"] = memory
            rows.append(row)
            print(
                f"  measured: {case}, {workers} workers: model receives {row['model_clips_per_s']:.0f} clips/s, "
                f"loader only {row['loader_clips_per_s']:.0f} clips/s; worker RSS (MiB) by epoch {memory}",
                flush=True,
            )
            del loader
    for row in rows:
        base = next((r for r in rows if r["num_workers"] == row["num_workers"] and r["case"] == "baseline"), None)
        for key in ("model", "loader"):
            value = row[f"{key}_clips_per_s"] / base[f"{key}_clips_per_s"] if base else float("nan")
            row[f"{key}_vs_baseline"] = round(value, 2)
        for key in ("model_clips_per_s", "loader_clips_per_s"):
            row[key] = round(row[key])
        print(
            f"{row['case']:>14} | {row['num_workers']} workers | model receives {row['model_clips_per_s']:>5} clips/s "
            f"({row['model_vs_baseline']:.2f}x) | loader only {row['loader_clips_per_s']:>5} clips/s "
            f"({row['loader_vs_baseline']:.2f}x)"
        )
    stem = args.out / f"video_w{'-'.join(map(str, args.workers))}"
    title = f"motion videos, {FRAMES}x{SIZE} px clips, batch {args.batch_size}"
    write_results(stem, vars(args), rows, "model_clips_per_s", title)


if __name__ == "__main__":
    main()
