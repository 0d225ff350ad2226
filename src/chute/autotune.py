"""``num_workers=auto``: probe loader settings for a few seconds each and keep the fastest.

Each candidate (worker count, and prefetch depth for worker processes) gets a fresh DataLoader; the
first batch (worker start-up) is not timed, then batches are counted for ``seconds`` or
``max_batches``, whichever comes first. Throughput, not latency, decides. The search is short on
purpose: on 2 cores it tries 5 settings in a few seconds, against minutes for timing full epochs.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from chute.collate import samples_in
from chute.loader import LoaderSettings


def candidates(settings: LoaderSettings, cpus: int | None = None, threads: bool = True) -> list[LoaderSettings]:
    """Worker processes 0, 1, 2, 4, ... up to the CPU count (at most 8), prefetch 2 and 4 with workers;
    with ``threads``, also the threaded backend with 1 thread and one per CPU (prefetch 2)."""
    cpus = cpus or os.cpu_count() or 1
    counts = sorted({0, 1, *[c for c in (2, 4, 8) if c <= min(cpus, 8)], min(cpus, 8)})
    out = []
    for workers in counts:
        for prefetch in (None,) if workers == 0 else (2, 4):
            out.append(
                dataclasses.replace(
                    settings,
                    num_workers=workers,
                    prefetch_factor=prefetch,
                    persistent_workers=False,
                    timeout=0.0,
                    backend="torch",
                )
            )
    if threads:
        for count in sorted({1, min(cpus, 8)}):
            out.append(
                dataclasses.replace(
                    settings,
                    num_workers=count,
                    prefetch_factor=2,
                    persistent_workers=False,
                    timeout=0.0,
                    backend="threads",
                )
            )
    return out


def probe(loader: Iterable[Any], seconds: float, max_batches: int) -> float:
    """Samples/s of ``loader`` after its first batch, over ``seconds`` or ``max_batches``."""
    iterator = iter(loader)
    try:
        next(iterator)  # start-up: worker processes, first reads
    except StopIteration:
        return 0.0
    samples, start = 0, time.perf_counter()
    for i, batch in enumerate(iterator):
        samples += samples_in(batch) or 1  # unsized batches count as one
        if i + 1 >= max_batches or time.perf_counter() - start >= seconds:
            break
    elapsed = time.perf_counter() - start
    del iterator  # shuts the probe's workers down
    return samples / elapsed if elapsed > 0 and samples else 0.0


def autotune(
    make_loader: Callable[[LoaderSettings], Iterable[Any]],
    settings: LoaderSettings,
    *,
    seconds: float = 1.0,
    max_batches: int = 20,
    cpus: int | None = None,
    threads: bool = True,
) -> tuple[LoaderSettings, list[dict[str, Any]]]:
    """The fastest of :func:`candidates` for ``make_loader`` and what each measured (also logged)."""
    started = time.perf_counter()
    results = []
    for candidate in candidates(settings, cpus, threads):
        rate = probe(make_loader(candidate), seconds, max_batches)
        results.append(
            {
                "backend": candidate.backend,
                "num_workers": candidate.num_workers,
                "prefetch_factor": candidate.prefetch_factor,
                "samples_per_s": round(rate, 1),
            }
        )
    best = max(range(len(results)), key=lambda i: results[i]["samples_per_s"])
    choice = results[best]
    threaded = choice["backend"] == "threads"
    chosen = dataclasses.replace(
        settings,
        num_workers=choice["num_workers"],
        prefetch_factor=choice["prefetch_factor"],
        backend=choice["backend"],
        persistent_workers=None if threaded else settings.persistent_workers,
        multiprocessing_context=None if threaded else settings.multiprocessing_context,
    )
    table = ", ".join(
        f"{_short(r['backend'])}{r['num_workers']}/p{r['prefetch_factor'] or '-'}: {r['samples_per_s']:,.0f}/s"
        for r in results
    )
    rank_zero_info(
        f"loader autotune ({time.perf_counter() - started:.1f} s; w = worker processes, t = threads): {table} -> "
        f"backend={chosen.backend}, num_workers={chosen.num_workers}, prefetch_factor={chosen.prefetch_factor}"
    )
    return chosen, results


def _short(backend: str) -> str:
    return "t" if backend == "threads" else "w"
