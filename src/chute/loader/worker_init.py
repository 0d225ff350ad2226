"""What every DataLoader worker process does as it starts: one thread per library, then its seeds.

A worker is one of ``num_workers`` processes sharing the machine's cores, and its parallelism is the
number of workers. But libraries size their own thread pools to the whole machine: OpenCV's
(``cv2.resize`` after a crop-aware decode) gets ``os.cpu_count()`` threads, OpenBLAS (NumPy, SciPy)
likewise, so 15 workers on 16 cores ran ~250 OS threads contending for 16 cores (issue 25).
torch already runs one intra-op thread in a worker; chute does the same for OpenCV, OpenBLAS and
OpenMP (through ``threadpoolctl``). libjpeg-turbo and chute's decoder use no threads of their own,
and PyAV decodes with one (``decode_frames(threads=1)``). ``docs/benchmarks.md`` ("Scaling with
cores") has the measurements; ``CHUTE_LIBRARY_THREADS=off`` leaves the pools as the libraries
size them, to measure the difference, and ``CHUTE_LIBRARY_THREADS=N`` gives each library N.
"""

from __future__ import annotations

import os

import torch

from chute.loader.seeding import WorkerSeeder

ENV = "CHUTE_LIBRARY_THREADS"


def library_threads() -> int | None:
    """Threads per library in a worker: ``CHUTE_LIBRARY_THREADS`` (default 1; ``off``: leave them)."""
    value = os.environ.get(ENV, "1").strip().lower()
    if value in ("off", "none", "0", "false", "no"):
        return None
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(
            f"{ENV}={value!r}: give a number of threads >= 1, or 'off' to leave the libraries' pools alone"
        )
    return threads


def limit_library_threads(threads: int | None = None) -> dict[str, int]:
    """Give torch, OpenCV, OpenBLAS and OpenMP ``threads`` threads each in this process.

    For a loader worker process (it changes process-wide settings). ``None``: what
    :func:`library_threads` says. Returns each library's thread count afterwards (empty when off).
    """
    threads = library_threads() if threads is None else threads
    if threads is None:
        return {}
    import cv2
    from threadpoolctl import threadpool_info, threadpool_limits

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    threadpool_limits(limits=threads)  # OpenBLAS and OpenMP runtimes loaded in this process
    counts = {"torch": torch.get_num_threads(), "opencv": cv2.getNumThreads()}
    for pool in threadpool_info():
        name = str(pool.get("internal_api"))
        counts[name] = max(counts.get(name, 0), int(pool.get("num_threads", 0)))
    return counts


class WorkerInit:
    """``worker_init_fn`` of chute's DataLoaders: :func:`limit_library_threads`, then (if ``seed``)
    :class:`~chute.loader.seeding.WorkerSeeder`'s per-worker seeds.

    Args:
        rank: This process's rank, mixed into the workers' seeds.
        seed: Seed Python, NumPy, torch and the dataset's transforms in each worker.
    """

    def __init__(self, rank: int = 0, seed: bool = True) -> None:
        self.seeder = WorkerSeeder(rank) if seed else None

    def __call__(self, worker_id: int) -> None:
        limit_library_threads()
        if self.seeder is not None:
            self.seeder(worker_id)
