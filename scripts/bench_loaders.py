"""Samples/s of chute's threaded loader against well-kept engines that do the same job, side by side.

    python scripts/bench_loaders.py                                   # image + table, 2 threads/workers
    python scripts/bench_loaders.py --workers 1 2 4 --epochs 5
    python scripts/bench_loaders.py --workloads table --rows 1000000 --engines torchdata-nodes spdl
    python scripts/bench_loaders.py --images 128 --rows 20000 --epochs 1 --workers 2   # smoke run

Every engine reads the same dataset object in batches of ``--batch-size`` (64) random indices, one
``dataset.__getitems__(indices)`` call per batch (no per-sample ``__getitem__``, no collate step),
in order, with pinned memory off; N (``--workers``) is each engine's thread or process count:

- ``chute-threads``: ``build_loader(dataset, LoaderSettings(backend="threads", num_workers=N))``,
  chute's hand-written :class:`~chute.loader.ThreadedLoader` (N threads, 2 batches ahead per thread);
- ``chute-processes``: the same with ``backend="torch"``: torch's DataLoader, N persistent workers;
- ``torchdata-stateful``: ``StatefulDataLoader(dataset, batch_size=64, shuffle=True,
  num_workers=N, persistent_workers=True)``; torch's fetcher calls ``__getitems__`` by itself;
- ``torchdata-nodes``: ``SamplerWrapper(BatchSampler(RandomSampler)) -> ParallelMapper(
  dataset.__getitems__, num_workers=N, method="thread", in_order=True) -> Prefetcher(2)``, in a ``Loader``;
- ``spdl``: ``PipelineBuilder().add_source(batch_sampler).pipe(dataset.__getitems__, concurrency=N,
  output_order="input").add_sink(2 * N).build(num_threads=N)``, built afresh for each pass.

Workloads: ``image``: JPEG photos written once by :class:`~chute.datasets.PhotoFolder` (``--images``
in total, ~90% of them in ``train``), read through ``ImageFolderDataModule.dataset("train")`` with
``create_transforms(image_size=224)``: crop-aware decoding straight to a random 224 px crop, uint8,
whole batches gathered; ``table``: ``TabularDataset`` over a ``--rows`` x ``--features`` float32
matrix (a gather per batch).

One warm-up pass per engine, then the median over ``--epochs`` passes of two figures: samples/s over
the whole pass, from ``iter()`` to the loop's end (start-up and shutdown included: what an epoch
costs), and ``steady`` samples/s from the first batch to the last. The two differ by fixed per-pass
costs: torchdata.nodes and SPDL poll their queues every 0.1 s (torchdata ``nodes.constants.QUEUE_TIMEOUT``,
SPDL's event loop), so each of their passes carries up to ~0.1 s of start/stop, which dominates
small smoke runs and fades over long passes. Every pass must deliver exactly ``len(dataset)``
samples. An engine that cannot be imported or fails is skipped with its reason printed (and kept in
the JSON). Writes JSON, CSV and PNG per workload to outputs/benchmarks/ (``pip install -e ".[bench]"``
brings the engines).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, Dataset, RandomSampler

from benchlib import write_results
from chute.collate import passthrough
from chute.loader import LoaderSettings, build_loader

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
BASELINE = "chute-threads"

Engine = Callable[[Dataset[Any], int, int], Iterable[Any]]  # (dataset, workers, batch size) -> re-iterable loader


def _batches(dataset: Dataset[Any], batch_size: int) -> BatchSampler:
    """The order the library engines read in: a seeded random permutation cut into index batches."""
    order = RandomSampler(range(len(dataset)), generator=torch.Generator().manual_seed(0))  # type: ignore[arg-type]
    return BatchSampler(order, batch_size, drop_last=False)


def gather(dataset: Dataset[Any]) -> Callable[[list[int]], Any]:
    """The dataset's whole-batch read, the one call per batch every engine makes."""
    return dataset.__getitems__  # type: ignore[attr-defined]


def chute_loader(backend: str) -> Engine:
    def make(dataset: Dataset[Any], workers: int, batch_size: int) -> Iterable[Any]:
        settings = LoaderSettings(batch_size=batch_size, num_workers=workers, backend=backend, pin_memory=False)
        return build_loader(dataset, settings, train=True, seed=0, collate_fn=passthrough)

    return make


def stateful_dataloader(dataset: Dataset[Any], workers: int, batch_size: int) -> Iterable[Any]:
    from torchdata.stateful_dataloader import StatefulDataLoader

    # torchdata 0.11 calls torch.set_vital, deprecated since; the warning says nothing about the loader.
    warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
    return StatefulDataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, collate_fn=passthrough,
        persistent_workers=True, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip


def torchdata_nodes(dataset: Dataset[Any], workers: int, batch_size: int) -> Iterable[Any]:
    from torchdata.nodes import Loader, ParallelMapper, Prefetcher, SamplerWrapper

    source = SamplerWrapper(_batches(dataset, batch_size))
    mapped = ParallelMapper(source, map_fn=gather(dataset), num_workers=workers, method="thread", in_order=True)
    return Loader(Prefetcher(mapped, prefetch_factor=2))


class SpdlPasses:
    """One SPDL pipeline per pass (its iterator covers one pass over a non-continuous source)."""

    def __init__(self, dataset: Dataset[Any], workers: int, batch_size: int) -> None:
        import spdl.pipeline  # noqa: F401  (fail here, at construction, when SPDL is missing)

        self.dataset, self.workers, self.batch_size = dataset, workers, batch_size

    def __iter__(self) -> Iterator[Any]:
        from spdl.pipeline import PipelineBuilder

        builder: PipelineBuilder[list[int], Any] = PipelineBuilder()
        pipeline = (
            builder.add_source(_batches(self.dataset, self.batch_size))
            .pipe(gather(self.dataset), concurrency=self.workers, output_order="input")
            .add_sink(2 * self.workers)
            .build(num_threads=self.workers)
        )
        with pipeline.auto_stop():
            yield from pipeline


ENGINES: dict[str, Engine] = {
    BASELINE: chute_loader("threads"),
    "chute-processes": chute_loader("torch"),
    "torchdata-stateful": stateful_dataloader,
    "torchdata-nodes": torchdata_nodes,
    "spdl": SpdlPasses,
}
SHORT = {  # bar labels that fit benchlib's chart
    BASELINE: "chute\nthreads", "chute-processes": "chute\nprocesses",
    "torchdata-stateful": "Stateful\nDataLoader", "torchdata-nodes": "torchdata\n.nodes",
    "spdl": "SPDL",
}  # fmt: skip


def image_dataset(root: Path | None, images: int) -> Dataset[Any]:
    from chute.datamodules import ImageFolderDataModule
    from chute.datasets import PhotoFolder
    from chute.transforms import create_transforms

    folder = PhotoFolder(num_images=images)(root or Path("data/photos" if images == 2000 else f"data/photos-{images}"))
    t = create_transforms(image_size=224, crop_pct=0.875)
    dm = ImageFolderDataModule(folder, train_transform=t.train, val_transform=t.val, mean=MEAN, std=STD)
    dm.setup("fit")
    return dm.dataset("train")


def table_dataset(rows: int, features: int) -> Dataset[Any]:
    from chute.datasets import TabularDataset

    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, features), dtype=np.float32)
    return TabularDataset(x, rng.integers(0, 10, size=rows))


def rate(loader: Iterable[Any], expected: int) -> tuple[float, float]:
    """Samples/s over a whole pass (from ``iter()`` to the loop's end), and steady samples/s: from the
    first batch to the last one, leaving out the engine's start-up and shutdown."""
    start, samples, first, first_at, last_at = time.perf_counter(), 0, 0, 0.0, 0.0
    for batch in loader:
        last_at = time.perf_counter()
        if not samples:
            first, first_at = len(batch[0]), last_at
        samples += len(batch[0])
    seconds = time.perf_counter() - start
    if samples != expected:  # every engine must do the whole pass, no more, no less
        raise RuntimeError(f"a pass delivered {samples} samples, not the dataset's {expected}")
    steady = (samples - first) / (last_at - first_at) if samples > first else math.nan  # one batch: undefined
    return samples / seconds, steady


def measure(loader: Iterable[Any], epochs: int, expected: int) -> tuple[float, float]:
    rate(loader, expected)  # warm-up pass: worker start-up, page cache, first-call costs
    passes = [rate(loader, expected) for _ in range(epochs)]
    return statistics.median(p[0] for p in passes), statistics.median(p[1] for p in passes)


def run_workload(
    name: str, dataset: Dataset[Any], args: argparse.Namespace, skipped: dict[str, str]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for workers in args.workers:
        for engine in args.engines:
            torch.manual_seed(0)
            try:
                loader = ENGINES[engine](dataset, workers, args.batch_size)
                whole, steady = measure(loader, args.epochs, len(dataset))  # type: ignore[arg-type]
            except Exception as err:  # an engine that is missing or breaks here is reported, not fatal
                reason = f"{type(err).__name__}: {err}".splitlines()[0]
                if isinstance(err, ImportError):
                    reason = f"not installed ({reason}); pip install -e '.[bench]'"
                skipped[f"{name}/{engine}/{workers}"] = reason
                print(f"skipped {engine} ({name}, {workers} workers): {reason}")
                continue
            rows.append({
                "label": f"{SHORT[engine]}\n{workers}w", "workload": name, "engine": engine, "num_workers": workers,
                "samples_per_s": round(whole), "steady_samples_per_s": steady if math.isnan(steady) else round(steady),
            })  # fmt: skip
            del loader  # persistent workers and threads go before the next engine starts
    for row in rows:
        base = next((r for r in rows if r["num_workers"] == row["num_workers"] and r["engine"] == BASELINE), None)
        for key, ratio in (("samples_per_s", "vs_chute_threads"), ("steady_samples_per_s", "steady_vs_chute_threads")):
            row[ratio] = round(row[key] / base[key], 2) if base else float("nan")
        print(
            f"{name:>5} | {row['engine']:>18} | {row['num_workers']} workers | "
            f"{row['samples_per_s']:>11,} samples/s ({row['vs_chute_threads']:.2f}x chute threads) | "
            f"steady {row['steady_samples_per_s']:>11,} ({row['steady_vs_chute_threads']:.2f}x)"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", choices=["image", "table"], default=["image", "table"])
    parser.add_argument("--engines", nargs="+", choices=list(ENGINES), default=list(ENGINES))
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="threads or processes per engine (>= 1)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3, help="timed passes after the warm-up pass")
    parser.add_argument("--images", type=int, default=2000, help="photos written (train + val)")
    parser.add_argument("--root", type=Path, default=None, help="photo folder (default data/photos[-N])")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"))
    args = parser.parse_args()
    if min(args.workers) < 1:
        parser.error("--workers: every engine here runs >= 1 thread or process (0 would compare only the caller)")
    if BASELINE not in args.engines:
        args.engines.insert(0, BASELINE)  # the ratios are to it

    for name in args.workloads:
        dataset = image_dataset(args.root, args.images) if name == "image" else table_dataset(args.rows, args.features)
        skipped: dict[str, str] = {}
        rows = run_workload(name, dataset, args, skipped)
        if not rows:
            continue
        title = "photos, 224 px crops" if name == "image" else f"table {args.rows:,} x {args.features} float32"
        stem = args.out / f"loaders_{name}_w{'-'.join(map(str, args.workers))}"
        write_results(
            stem, vars(args) | {"skipped": skipped}, rows, "samples_per_s", f"{title}, batch {args.batch_size}"
        )


if __name__ == "__main__":
    main()
