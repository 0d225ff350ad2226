"""Resident memory of a cached image dataset with 2 workers: chute's shared cache vs per-worker caching.

    python scripts/bench_cache_memory.py                 # digits as 3x128x128 RGB, 2 workers, 3 epochs
    python scripts/bench_cache_memory.py --size 160 --epochs 2

Three ways to keep decoded, resized images in memory, each read for ``--epochs`` shuffled epochs by
a DataLoader with ``--workers`` persistent workers:

- ``per-worker lru cache``: the usual hand-written cache, a dict filled in ``__getitem__``; every
  worker fills its own copy;
- ``chute memory``: ``CachedDataset(store="memory")``: built once in shared memory before the
  workers start;
- ``chute disk``: ``CachedDataset(store="disk")``: a memory-mapped file (page cache, shared).

Reports USS (memory unique to a process) and PSS (shared pages split among their users) of the main
process and each worker, from ``/proc/<pid>/smaps_rollup`` (Linux), after the last epoch.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from benchlib import write_results
from chute.datasets import CachedDataset, DigitsFolder, ImageFolderDataset, scan_folder
from chute.transforms import SquareResize


def memory_kb(pid: int) -> dict[str, int]:
    """``Pss`` and ``Private_*`` (USS) of a process, in kB."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, rest = line.split(":", 1)
        values[key] = int(rest.split()[0])
    return {"pss": values["Pss"], "uss": values["Private_Clean"] + values["Private_Dirty"]}


class PerWorkerCache(Dataset[Any]):
    """A dict filled on first access, in whichever process reads the sample."""

    def __init__(self, source: Dataset[Any]) -> None:
        self.source = source
        self.cache: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        if i not in self.cache:
            self.cache[i] = self.source[i]
        image, label = self.cache[i]
        return image.clone(), label


def measure(dataset: Dataset[Any], workers: int, epochs: int) -> dict[str, float]:
    loader = DataLoader(dataset, batch_size=64, shuffle=True, num_workers=workers, persistent_workers=True)
    iterator: Any = None
    for _ in range(epochs):
        iterator = iter(loader)
        for _batch in iterator:
            pass
    pids = [p.pid for p in iterator._workers]  # the only handle on the worker processes
    main = memory_kb(os.getpid())
    per_worker = [memory_kb(pid) for pid in pids]
    del iterator, loader
    gc.collect()
    return {
        "main_uss_mb": main["uss"] / 1024,
        "workers_uss_mb": sum(w["uss"] for w in per_worker) / 1024,
        "total_pss_mb": (main["pss"] + sum(w["pss"] for w in per_worker)) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = DigitsFolder(progress=False)(Path(tmp) / "digits")
        index = scan_folder(root / "train")
        source = ImageFolderDataset(index, SquareResize(args.size), image_mode="RGB")
        data_mb = len(index) * 3 * args.size * args.size / 2**20
        print(f"{len(index)} images as 3x{args.size}x{args.size} uint8: {data_mb:.1f} MB of pixels")
        cases: list[tuple[str, Any]] = [
            ("per-worker lru cache", lambda: PerWorkerCache(source)),
            ("chute memory", lambda: CachedDataset(source, store="memory", progress=False)),
            ("chute disk", lambda: CachedDataset(source, store="disk", cache_dir=Path(tmp) / "c", progress=False)),
        ]
        rows = []
        for label, make in cases:
            torch.manual_seed(0)
            stats = measure(make(), args.workers, args.epochs)
            rows.append({"label": label, "data_mb": round(data_mb, 1), **{k: round(v, 1) for k, v in stats.items()}})
            print(
                f"{label:>22}: main USS {stats['main_uss_mb']:7.1f} MB | workers USS {stats['workers_uss_mb']:7.1f} MB"
                f" | total PSS {stats['total_pss_mb']:7.1f} MB"
            )
    write_results(
        args.out / f"cache_memory_{args.size}px_w{args.workers}",
        vars(args),
        rows,
        "workers_uss_mb",
        f"worker-private memory, {args.workers} workers",
    )


if __name__ == "__main__":
    main()
