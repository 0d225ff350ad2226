"""How long a loader takes to its first batch when it starts its worker processes, against a plain one.

    python scripts/bench_worker_start.py                  # 2 workers, 8 starts each
    python scripts/bench_worker_start.py --workers 4 --starts 20

Evaluation loaders start their workers at every pass unless they persist (``validate``, ``test``,
``predict``, each ``num_workers=auto`` probe), so this time is paid again and again by small runs.
Both loaders read the same in-memory table (the bundled breast-cancer data, batches of 64) so the
figure is the start itself: chute's ``TabularDataModule`` validation loader (its worker set-up:
library threads, seeds, the batch arena) and a ``torch.utils.data.DataLoader`` over a tensor. Each
start is timed from ``iter()`` to the first batch; the median and every start are printed, the two
loaders alternating.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.utils.data as tud

from benchlib import alternate
from chute.datamodules import TabularDataModule
from chute.datasets import SklearnTable
from chute.loader import LoaderSettings


def first_batch_ms(loader: Any) -> float:
    start = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    elapsed = time.perf_counter() - start
    del iterator  # its workers stop here, outside the timing
    return elapsed * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--starts", type=int, default=8)
    parser.add_argument("--data", default="data/breast_cancer/breast_cancer.csv")
    args = parser.parse_args()
    if not Path(args.data).exists():
        SklearnTable(name="breast_cancer")(args.data)
    settings = LoaderSettings(batch_size=64, num_workers=args.workers, persistent_workers=False)
    dm = TabularDataModule(args.data, target="diagnosis", loader=settings, seed=0)
    dm.setup("fit")
    plain = tud.TensorDataset(torch.arange(1000))
    loaders: dict[str, Any] = {
        "chute": dm.val_dataloader(),
        "torch": tud.DataLoader(plain, 64, num_workers=args.workers),
    }
    for name, ms in alternate(loaders, args.starts, first_batch_ms).items():
        print(f"{name:>6}: median {statistics.median(ms):6.1f} ms to the first batch ({args.workers} workers); "
              f"every start: {[round(m) for m in ms]}")  # fmt: skip


if __name__ == "__main__":
    main()
