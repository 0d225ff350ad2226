"""Rows/s of SqlDataModule vs the per-row ``SELECT ... WHERE id = ?`` Dataset, on SQLite and PostgreSQL.

    python scripts/bench_sql.py                            # 200k rows, batch 4096, 0 and 2 workers
    python scripts/bench_sql.py --indexes memory stream    # also index=stream (key ranges + shuffle buffer)
    python scripts/bench_sql.py --rows 500000 --workers 2 --pg-url postgresql://ana@db.lab/bench

The table is the bundled breast-cancer data tiled to ``--rows`` rows (31 columns, integer key
``id``), in a SQLite file and in PostgreSQL (a throwaway server started here, Debian's
``postgresql`` package, unless ``--pg-url`` names one). The baseline is what users write first: a
map-style Dataset whose ``__getitem__`` runs one ``SELECT`` by key (Python's ``sqlite3`` / psycopg,
one connection per worker) and returns tensors, shuffled by the DataLoader and stacked by
``default_collate``. chute's side is ``SqlDataModule.train_dataloader()``: one query per batch over
key ranges, standardized features. Both shuffle, use the same batch size and ``num_workers``, and
count what the model receives (SqlDataModule has no batch hook: its loader output is what the model
gets). With workers, chute's threads backend (what ``conf/data/sql.yaml`` ships) is measured too.
Rates are the median of ``--repeats`` passes after a warm-up; the baseline reads
``--baseline-batches`` batches a pass (it is slow), chute whole epochs. Writes JSON, CSV and a PNG
to outputs/benchmarks/.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bench_tabular import tiled_table
from benchlib import write_results
from chute.datamodules import SqlDataModule
from chute.datasets.sql_ingest import ingest

TABLE = "readings"


class PerRowSelect(Dataset[tuple[torch.Tensor, int]]):
    """One ``SELECT ... WHERE id = ?`` per sample, a connection per process (opened on first use)."""

    def __init__(self, kind: str, target: str, n: int, columns: list[str], classes: list[str]) -> None:
        self.kind, self.target, self.n, self.columns = kind, target, n, columns
        self.classes = {c: i for i, c in enumerate(classes)}
        self.connection: Any = None
        selected = ", ".join(f'"{c}"' for c in [*columns, "diagnosis"])
        mark = "?" if kind.startswith("sqlite") else "%s"
        self.sql = f"SELECT {selected} FROM {TABLE} WHERE id = {mark}"

    def __len__(self) -> int:
        return self.n

    def _connect(self) -> Any:
        if self.kind.startswith("sqlite"):
            import sqlite3

            return sqlite3.connect(self.target)
        import psycopg

        return psycopg.connect(self.target, autocommit=True)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.connection is None:
            self.connection = self._connect()
        row = self.connection.execute(self.sql, (index + 1,)).fetchone()
        return torch.tensor(row[:-1], dtype=torch.float32), self.classes[row[-1]]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "connection": None}


def pass_rate(loader: Iterable[Any], batches: int | None) -> float:
    start, rows = time.perf_counter(), 0
    for batch in itertools.islice(loader, batches):
        rows += len(batch[1])
    return rows / (time.perf_counter() - start)


def measure(loader: Iterable[Any], repeats: int, batches: int | None) -> tuple[float, list[float]]:
    pass_rate(loader, 1)  # warm-up: connections, worker start-up, page cache
    rates = [pass_rate(loader, batches) for _ in range(repeats)]
    return statistics.median(rates), rates


def compare(
    kind: str, url: str, baseline_target: str, rows: int, workers: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    settings = {"batch_size": args.batch_size, "num_workers": workers}
    dm = SqlDataModule(url, table=TABLE, target="diagnosis", val_fraction=0.01, loader=settings)
    dm.setup("fit")
    ours = dm.train_dataloader()
    columns = list(dm.encoding.encoder.numeric)  # type: ignore[union-attr]
    per_row = PerRowSelect(kind, baseline_target, rows, columns, list(dm.class_names))
    baseline = DataLoader(
        per_row, batch_size=args.batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0
    )
    cases = [("per-row SELECT Dataset", *measure(baseline, args.repeats, args.baseline_batches))]
    # Shut the baseline's persistent workers down now: left to the garbage collector, its iterator was
    # copied into chute's loaders' forked workers, whose exit then tried to stop workers that are
    # not their children ("AssertionError: can only test a child process", after a 2- and 3-worker run).
    del baseline
    gc.collect()
    for index in args.indexes:
        name = "chute SqlDataModule" + (", stream" if index == "stream" else "")
        if index != "memory":
            streamed = SqlDataModule(url, table=TABLE, target="diagnosis", val_fraction=0.01, loader=settings,
                                     index=index)  # fmt: skip
            streamed.setup("fit")
            ours = streamed.train_dataloader()
        cases.append((name, *measure(ours, args.repeats, None)))
        if workers > 0:  # the backend conf/data/sql.yaml ships: the drivers release the GIL while reading
            threaded = {**settings, "backend": "threads"}
            threads = SqlDataModule(url, table=TABLE, target="diagnosis", val_fraction=0.01, loader=threaded,
                                    index=index)  # fmt: skip
            threads.setup("fit")
            cases.append((name + ", threads", *measure(threads.train_dataloader(), args.repeats, None)))
    base_rate = cases[0][1]
    out = []
    for label, rate, runs in cases:
        out.append({
            "label": f"{kind} w{workers}: {label}", "database": kind, "num_workers": workers, "rows_per_s": round(rate),
            "runs": [round(r) for r in runs], "vs_baseline": round(rate / base_rate, 1),
        })  # fmt: skip
        ratio = f"{rate / base_rate:.1f}x"
        print(f"{kind:>10} w{workers} {label:>38}: {rate:>10,.0f} rows/s ({ratio}) runs {out[-1]['runs']}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-batches", type=int, default=4)
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--indexes", nargs="+", default=["memory"], choices=["memory", "stream"])
    parser.add_argument("--pg-url", help="a PostgreSQL server to use instead of a throwaway one")
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"))
    args = parser.parse_args()

    data = tiled_table(args.rows).add_column(0, "id", [np.arange(1, args.rows + 1)])
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        if "sqlite" in args.databases:
            path = f"{tmp}/bench.db"
            ingest(data, f"sqlite:///{path}", TABLE)
            for workers in args.workers:
                results += compare("sqlite", f"sqlite:///{path}", path, args.rows, workers, args)
        if "postgresql" in args.databases:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: its tests' fixture
            from tests.postgres import TemporaryPostgres

            server = None if args.pg_url else TemporaryPostgres().start()
            url = args.pg_url or server.url  # type: ignore[union-attr]
            try:
                ingest(data, url, TABLE, if_exists="replace")
                for workers in args.workers:  # psycopg takes the same URL
                    results += compare("postgresql", url, url, args.rows, workers, args)
            finally:
                if server is not None:
                    server.stop()
    stem = args.out / f"sql_b{args.batch_size}"
    title = f"{args.rows:,} rows x 30 features, batch {args.batch_size}: rows/s"
    write_results(stem, vars(args), results, "rows_per_s", title)


if __name__ == "__main__":
    main()
