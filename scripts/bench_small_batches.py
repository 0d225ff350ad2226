"""What a small batch costs on its way from a worker process to the training process, against a plain DataLoader.

    python scripts/bench_small_batches.py                    # 1 and 2 workers, 5 rounds
    python scripts/bench_small_batches.py --workers 2 --rounds 9
    python scripts/bench_small_batches.py --sizes          # one tensor of each size, both ways
    python scripts/bench_small_batches.py --stream data/shards/breast_cancer   # JSONL shards instead

A table's batch is a few kilobytes: making it takes microseconds, and what is left is the trip.
torch sends every tensor of a batch through a new shared-memory file whose descriptor the receiver
fetches from the worker over a socket; chute's workers send a tensor up to
``chute.loader.buffers.INLINE_BYTES`` inside the message itself. Three loaders read the same rows
(the bundled breast-cancer table repeated to ``--rows`` rows, batches of 64, shuffled, persistent
workers), the three alternating in each round:

- ``torch``: ``torch.utils.data.DataLoader`` over a ``TensorDataset`` of the same features and labels;
- ``chute, shared memory``: chute's ``TabularDataModule`` train loader with ``INLINE_BYTES = 0``
  (every tensor as torch sends it: chute before this change);
- ``chute``: the same loader as it ships.

Each figure: the median time between two batches inside a pass (the pass's first batch, which
waits for the workers to be handed the pass, is left out), the consumer doing nothing else; the
median over rounds is printed with the spread.

``--stream DIR``: chute's ``StreamingDataModule`` over the JSONL shards in ``DIR`` (``python train.py
data=streaming`` writes the example's), whose batches ``collate_nested`` stacks, in place of the table.

``--sizes``: where the limit belongs. One worker returns one ``float32`` tensor at a time, of 4 KB
to 4 MB, sent torch's way and inside the message (no limit); microseconds a tensor.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.utils.data as tud

from benchlib import alternate
from chute.datamodules import StreamingDataModule, TabularDataModule
from chute.datasets import SklearnTable
from chute.loader import LoaderSettings, buffers


def batch_gaps_ms(loader: Any, passes: int = 2) -> float:
    """Median milliseconds between consecutive batches of ``loader``'s passes (first batches left out)."""
    gaps = []
    for _ in range(passes):
        iterator = iter(loader)
        next(iterator)
        last = time.perf_counter()
        for _batch in iterator:
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
    return statistics.median(gaps) * 1e3


class _Filled(tud.Dataset[torch.Tensor]):
    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes

    def __len__(self) -> int:
        return 400

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.full((self.nbytes // 4,), float(index))


def _inline_everything(worker: int) -> None:
    buffers.INLINE_BYTES = 1 << 40
    buffers.send_batches_lightly()


def per_tensor() -> None:
    for nbytes in (4 << 10, 64 << 10, 128 << 10, 256 << 10, 1 << 20, 4 << 20):
        line = []
        for way, init in (("torch's way", None), ("inside the message", _inline_everything)):
            loader = tud.DataLoader(
                _Filled(nbytes), batch_size=None, num_workers=1, worker_init_fn=init, persistent_workers=True
            )
            batch_gaps_ms(loader, passes=1)  # starts the worker
            line.append(f"{way} {batch_gaps_ms(loader) * 1e3:6.0f} us")
            del loader
        print(f"{nbytes >> 10:>5} KiB: " + ", ".join(line))


def started_as_before(make: Callable[[], Any]) -> Any:
    """A loader from ``make`` whose workers send every tensor torch's way (``INLINE_BYTES = 0``, which
    they inherit when its first pass forks them: started here, then the limit is put back)."""
    shipped = buffers.INLINE_BYTES
    buffers.INLINE_BYTES = 0
    try:
        loader = make()
        batch_gaps_ms(loader, passes=1)
    finally:
        buffers.INLINE_BYTES = shipped
    return loader


def report(workers: int, loaders: dict[str, Any], rounds: int, passes: int) -> None:
    width = max(len(name) for name in loaders)
    for name, ms in alternate(loaders, rounds, lambda loader: batch_gaps_ms(loader, passes)).items():
        print(f"{workers} worker(s) {name:>{width}}: {statistics.median(ms):5.2f} ms a batch "
              f"(rounds {min(ms):.2f}-{max(ms):.2f})")  # fmt: skip


def streams(root: str, workers_counts: list[int], rounds: int) -> None:
    for workers in workers_counts:
        settings = LoaderSettings(batch_size=64, num_workers=workers, persistent_workers=True)
        dm = StreamingDataModule(root, shuffle_buffer=1000, seed=0, loader=settings)
        dm.setup("fit")
        before = started_as_before(dm.train_dataloader)
        report(workers, {"chute stream, shared memory": before, "chute stream": dm.train_dataloader()}, rounds, 8)


def repeated_table(source: Path, rows: int, out: Path) -> Path:
    with source.open(newline="") as handle:
        header, *body = list(csv.reader(handle))
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for i in range(rows):
            writer.writerow(body[i % len(body)])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--data", default="data/breast_cancer/breast_cancer.csv")
    parser.add_argument("--sizes", action="store_true", help="one tensor of each size, both ways, instead")
    parser.add_argument("--stream", help="a folder of JSONL shards to read instead of the table")
    args = parser.parse_args()
    if args.sizes:
        per_tensor()
        return
    if args.stream:
        streams(args.stream, args.workers, args.rounds)
        return
    if not Path(args.data).exists():
        SklearnTable(name="breast_cancer")(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        table = repeated_table(Path(args.data), args.rows, Path(tmp) / "table.csv")
        for workers in args.workers:
            settings = LoaderSettings(batch_size=64, num_workers=workers, persistent_workers=True)
            dm = TabularDataModule(str(table), target="diagnosis", loader=settings, seed=0)
            dm.setup("fit")
            features, labels = next(iter(dm.train_dataloader()))  # the dtypes and widths of chute's batches
            plain = tud.TensorDataset(
                torch.randn(args.rows, features.shape[1], dtype=features.dtype),
                torch.randint(0, 2, (args.rows,), dtype=labels.dtype),
            )
            loaders: dict[str, Any] = {
                "torch": tud.DataLoader(plain, 64, shuffle=True, num_workers=workers, persistent_workers=True),
                "chute, shared memory": started_as_before(dm.train_dataloader),
                "chute": dm.train_dataloader(),
            }
            report(workers, loaders, args.rounds, 2)


if __name__ == "__main__":
    main()
