"""Rows/s of chute's TabularDataModule loader vs a per-sample Dataset + default_collate DataLoader.

    python scripts/bench_tabular.py                      # 500k rows, batch 4096, main process
    python scripts/bench_tabular.py --rows 200000 --num-workers 2

Both loaders read the same encoded float32 features and int64 labels (the bundled breast-cancer
table tiled to ``--rows`` rows, with small noise), shuffle, and use the same batch size and
``num_workers``; only the fetch differs: the baseline calls ``__getitem__`` per row and lets
``default_collate`` stack them, chute's ``TabularDataset.__getitems__`` gathers the batch at once.
Each figure is the median of ``--repeats`` full epochs after a warm-up epoch. Writes JSON, CSV and a
PNG to outputs/benchmarks/.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset

from benchlib import write_results
from chute.datamodules import TabularDataModule
from chute.datasets import sklearn_table, write_table


class PerRowDataset(Dataset[tuple[torch.Tensor, int]]):
    """What most tabular pipelines look like: one row per ``__getitem__``."""

    def __init__(self, features: np.ndarray, targets: np.ndarray) -> None:
        self.features = features
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.features[index]), int(self.targets[index])


def epoch_rate(loader: Iterable[Any]) -> float:
    start = time.perf_counter()
    rows = 0
    for batch in loader:
        rows += len(batch[1])
    return rows / (time.perf_counter() - start)


def measure(loader: Iterable[Any], repeats: int) -> float:
    epoch_rate(loader)  # warm-up: worker start-up, page cache, allocator
    return statistics.median(epoch_rate(loader) for _ in range(repeats))


def tiled_table(rows: int, seed: int = 0) -> pa.Table:
    base = sklearn_table("breast_cancer")
    reps = -(-rows // base.num_rows)
    index = pa.array(np.tile(np.arange(base.num_rows), reps)[:rows])
    table = base.take(index)
    rng = np.random.default_rng(seed)
    columns = {}
    for name in table.column_names:
        column = table.column(name)
        if pa.types.is_floating(column.type):
            values = column.to_numpy()
            column = pa.array(values * rng.normal(1.0, 0.01, rows))
        columns[name] = column
    return pa.table(columns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "table.parquet"
        write_table(tiled_table(args.rows), path)
        loader_settings = {"batch_size": args.batch_size, "num_workers": args.num_workers}
        dm = TabularDataModule(str(path), target="diagnosis", val_fraction=0.01, loader=loader_settings)
        dm.setup("fit")
        chute_loader = dm.train_dataloader()
        train = dm.dataset("train")
        baseline = DataLoader(
            PerRowDataset(train.features.numpy(), train.targets.numpy()),
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=args.num_workers,
            persistent_workers=args.num_workers > 0,
        )
        cases: list[tuple[str, Any]] = [
            ("per-row Dataset + default_collate", baseline),
            ("chute TabularDataModule", chute_loader),
        ]
        if args.num_workers == 0:  # the threaded loader runs in this process
            threads = TabularDataModule(
                str(path), target="diagnosis", val_fraction=0.01, loader={**loader_settings, "backend": "threads"}
            )
            threads.setup("fit")
            cases.append(("chute, threads backend", threads.train_dataloader()))
        rows: list[dict[str, Any]] = []
        for label, loader in cases:
            rate = measure(loader, args.repeats)
            rows.append({"label": label, "rows_per_s": round(rate), "num_workers": args.num_workers})
    for row in rows:
        row["vs_baseline"] = round(row["rows_per_s"] / rows[0]["rows_per_s"], 1)
        print(f"{row['label']:>36}: {row['rows_per_s']:>12,} rows/s  ({row['vs_baseline']}x)")
    stem = args.out / f"tabular_b{args.batch_size}_w{args.num_workers}"
    title = f"{len(train):,} rows x {train.features.shape[1]} features, batch {args.batch_size}"
    write_results(stem, vars(args), rows, "rows_per_s", title)


if __name__ == "__main__":
    main()
