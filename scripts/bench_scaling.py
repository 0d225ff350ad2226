"""Does the on-the-fly image loader scale with cores? Images/s per worker and CPU-seconds per image.

    python scripts/bench_scaling.py                         # 1 and 2 workers (the 2-core machine)
    python scripts/bench_scaling.py --workers 1 4 8 15      # a 16-core machine
    python scripts/bench_scaling.py --library-threads off   # leave the libraries' pools as they are

Workload: the photo folder of ``scripts/bench_images.py`` (PhotoFolder: JPEGs 400-640 px), the
training loader of ``ImageFolderDataModule`` with its default transforms (RandomResizedCrop(224) +
flip, JPEGs decoded straight to the crop on the CPU), batch 128, no trainer attached: the **loader
alone**, ``uint8`` batches, pinned where CUDA exists. The split is repeated once per worker, so
every worker loads the same number of batches in every case (an epoch's ramp and its uneven last
round weigh alike), and each epoch is timed from ``iter()`` to its last batch. For each worker
count, after one warm-up epoch, the median over ``--epochs`` of:

- images/s, and images/s per worker (the scaling figure: the issue's bar is >= 85% of 1 worker's);
- CPU-seconds per delivered image of all processes together (the main process with every thread
  it has, pin-memory thread included, and every worker process), read from ``/proc``;
- busy threads per worker process: threads that ran for over 2% of the epoch (``/proc/<pid>/task``),
  the sign of library thread pools at work.

``--library-threads off`` sets ``CHUTE_LIBRARY_THREADS=off``: workers keep the thread pools
their libraries size to the machine (OpenCV, OpenMP, OpenBLAS), as chute did before it limited
them; ``--pair`` runs both settings side by side, alternating, so a ratio comes from one run.
Writes JSON/CSV/PNG to ``outputs/benchmarks/``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchlib import write_results


def _cpu_seconds(pid: int, task: str | None = None) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) or of one of its threads."""
    with open(f"/proc/{pid}/stat" if task is None else f"/proc/{pid}/task/{task}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _task_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of process ``pid``."""
    out = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            out[task] = _cpu_seconds(pid, task)
    return out


def _busy_threads(before: dict[str, float], after: dict[str, float], wall: float) -> int:
    """Threads that ran for over 2% of ``wall`` between the two readings (idle pools do not count)."""
    return sum(1 for task, t in after.items() if t - before.get(task, 0.0) > 0.02 * wall)


def one_epoch(loader: Any) -> tuple[float, float, int, list[int]]:
    """Wall seconds, CPU seconds (all processes), images and busy threads per worker of one pass,
    timed from ``iter()`` (persistent workers already running) to the last batch."""
    running = getattr(loader, "_iterator", None)  # the persistent workers of the previous pass
    pids = [os.getpid(), *(w.pid for w in getattr(running, "_workers", []))]
    cpu0 = sum(_cpu_seconds(p) for p in pids)
    tasks0 = [_task_seconds(p) for p in pids[1:]]
    start, images = time.perf_counter(), 0
    for batch in loader:
        images += len(batch[0])
    wall = time.perf_counter() - start
    cpu = sum(_cpu_seconds(p) for p in pids) - cpu0
    threads = [_busy_threads(t0, _task_seconds(p), wall) for p, t0 in zip(pids[1:], tasks0, strict=True)]
    return wall, cpu, images, threads


def measure(root: Path, workers: int, epochs: int, batch_size: int) -> dict[str, Any]:
    import numpy as np

    from chute.datamodules import ImageFolderDataModule

    dm = ImageFolderDataModule(
        root, mean=[0.5] * 3, std=[0.25] * 3, decode="cpu", loader={"batch_size": batch_size, "num_workers": workers}
    )
    dm.setup("fit")
    # Every worker gets the same number of batches whatever their count: the split repeated once per
    # worker, so the ramp at an epoch's start and the uneven last round weigh alike in every case.
    index = dm._splits["train"]
    dm._splits["train"] = index.subset(np.tile(np.arange(len(index)), max(workers, 1)))
    loader = dm.train_dataloader()
    for _ in loader:  # warm-up: worker start, page cache
        pass
    runs = [one_epoch(loader) for _ in range(epochs)]
    wall = statistics.median(r[0] for r in runs)
    images = runs[0][2]
    cpu = statistics.median(r[1] for r in runs)
    rate = images / wall
    running = getattr(loader, "_iterator", None)
    if running is not None:  # end the persistent workers here, not in the next case's forked workers
        running._shutdown_workers()
    return {
        "num_workers": workers,
        "img_per_s": round(rate),
        "img_per_s_per_worker": round(rate / max(workers, 1)),
        "cpu_ms_per_img": round(1000 * cpu / images, 3),
        "busy_threads_per_worker": max(runs[-1][3], default=0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("data/photos"))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=2000, help="photos to write if the folder is new")
    parser.add_argument("--library-threads", choices=["on", "off"], default="on")
    parser.add_argument("--pair", action="store_true", help="measure with library threads off and on, alternating")
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"))
    args = parser.parse_args()

    from chute.datasets import PhotoFolder

    root = PhotoFolder(num_images=args.images, workers=os.cpu_count() or 1)(args.root)
    settings = ["off", "on"] if args.pair else [args.library_threads]
    rows: list[dict[str, Any]] = []
    for workers in args.workers:
        for setting in settings:
            os.environ["CHUTE_LIBRARY_THREADS"] = "1" if setting == "on" else "off"  # read by each worker
            row = {"library_threads": "chute's" if setting == "on" else "libraries' own"}
            row |= measure(root, workers, args.epochs, args.batch_size)
            row["label"] = f"{workers}w {setting}"
            rows.append(row)
            print(row, flush=True)
    for row in rows:
        one = next(
            r
            for r in rows
            if r["num_workers"] == rows[0]["num_workers"] and r["library_threads"] == row["library_threads"]
        )
        row["per_worker_vs_first"] = round(row["img_per_s_per_worker"] / one["img_per_s_per_worker"], 2)
    first = rows[0]["num_workers"]
    print(f"{'library threads':>16} | workers | img/s  | per worker | vs {first} | CPU ms/img | busy threads/worker")
    for r in rows:
        print(
            f"{r['library_threads']:>16} | {r['num_workers']:>7} | {r['img_per_s']:>6,} | "
            f"{r['img_per_s_per_worker']:>10,} | {r['per_worker_vs_first']:>4.2f} | {r['cpu_ms_per_img']:>10.3f} | "
            f"{r['busy_threads_per_worker']:>14}"
        )
    stem = args.out / f"scaling_w{'-'.join(map(str, args.workers))}"
    write_results(stem, vars(args), rows, "img_per_s_per_worker", f"loader only, per worker, {os.cpu_count()} cpus")
    torch.cuda.is_available()


if __name__ == "__main__":
    main()
