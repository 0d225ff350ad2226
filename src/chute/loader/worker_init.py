"""What every DataLoader worker process does as it starts: one thread per library, then its seeds.

A worker is one of ``num_workers`` processes sharing the machine's cores, and its parallelism is the
number of workers. But libraries size their own thread pools to the whole machine: OpenCV's
(``cv2.LUT`` normalizing a batch on a CPU trainer, large resizes) gets ``os.cpu_count()`` threads,
OpenBLAS (NumPy, SciPy) likewise, so 15 workers on 16 cores could run ~250 OS threads contending
for 16 cores (issue 25). torch already runs one intra-op thread in a worker; chute does the same
for OpenCV, OpenBLAS and OpenMP (through ``threadpoolctl``). libjpeg-turbo and chute's decoder use
no threads of their own, and PyAV decodes with one (``decode_frames(threads=1)``).

OpenCV needs care: ``cv2.setNumThreads`` in a forked child whose parent had started OpenCV's pool
waits forever for the parent's pool threads, which the child does not have (seen: an autotune
probe normalized a batch in the main process, the next probe's workers hung). So the parent sets
OpenCV to one thread just while it forks its workers (:func:`forking_workers`) and the children
inherit that; a worker started another way (``spawn``) imports OpenCV afresh and sets it itself.

``docs/benchmarks.md`` ("Scaling with cores") has the measurements; ``CHUTE_LIBRARY_THREADS=off``
leaves the pools as the libraries size them, to measure the difference, and
``CHUTE_LIBRARY_THREADS=N`` gives each library N.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Iterator
from typing import Any

import torch

from chute.loader.buffers import BatchArena
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


def limit_library_threads(threads: int | None = None, opencv: bool = True) -> dict[str, int]:
    """Give torch, OpenCV, OpenBLAS and OpenMP ``threads`` threads each in this process.

    For a loader worker process (it changes process-wide settings). ``None``: what
    :func:`library_threads` says. ``opencv=False`` leaves OpenCV alone: a worker forked without
    :func:`forking_workers` must not touch it (see the module docstring). Returns each library's
    thread count afterwards (empty when off).
    """
    threads = library_threads() if threads is None else threads
    if threads is None:
        return {}
    import cv2
    from threadpoolctl import threadpool_info, threadpool_limits

    torch.set_num_threads(threads)
    if opencv and cv2.getNumThreads() != threads:  # forked under forking_workers(): inherited already
        cv2.setNumThreads(threads)
    threadpool_limits(limits=threads)  # OpenBLAS and OpenMP runtimes loaded in this process
    counts = {"torch": torch.get_num_threads(), "opencv": cv2.getNumThreads()}
    for pool in threadpool_info():
        name = str(pool.get("internal_api"))
        counts[name] = max(counts.get(name, 0), int(pool.get("num_threads", 0)))
    return counts


@contextlib.contextmanager
def forking_workers() -> Iterator[None]:
    """Around the fork of worker processes, in the parent.

    - Where this process has started CUDA, its garbage is collected first, so a child never
      collects it: a cycle holding a CUDA tensor (a batch the device feed had in flight) freed in a
      forked worker aborts it ("CUDA error: initialization error", seen on the H200 when validation
      workers forked mid-fit). ``gc.freeze()`` instead, as Python's documentation suggests before
      ``fork``, made DDP ranks' workers hang inside ``fork`` here (the 3-rank contract test under
      pytest hung in 3 runs of 3 with it, passed 2 of 2 without; launched directly it passed 5 of 5:
      a race). Without CUDA there is nothing such a cycle could abort, and a full collection costs
      0.2-0.3 s of every loader start in a small training process (70% of a 2-worker loader's time
      to its first batch here), more in a larger one: it is skipped.
    - OpenCV at one thread (its pool's threads joined), so the children inherit a single-threaded
      OpenCV; only where OpenCV is loaded already (otherwise the children import it afresh) and the
      limits are on (:func:`library_threads`).

    The parent's own settings are restored after.
    """
    cv2: Any = sys.modules.get("cv2")
    threads = library_threads()
    hold = cv2 is not None and threads is not None
    before = cv2.getNumThreads() if hold else 0
    if hold:
        cv2.setNumThreads(threads)
    if torch.cuda.is_initialized():
        gc.collect()  # the parent's garbage goes here, not in a forked child (see above)
    try:
        yield
    finally:
        if hold:
            cv2.setNumThreads(before)


class WorkerInit:
    """``worker_init_fn`` of chute's DataLoaders: :func:`limit_library_threads`, then (if ``seed``)
    :class:`~chute.loader.seeding.WorkerSeeder`'s per-worker seeds.

    Args:
        rank: This process's rank, mixed into the workers' seeds.
        seed: Seed Python, NumPy, torch and the dataset's transforms in each worker.
        opencv: Whether the workers start under :func:`forking_workers` (or afresh), so that their
            OpenCV may be set (a loader chute does not start itself: ``False``).
    """

    def __init__(self, rank: int = 0, seed: bool = True, opencv: bool = True) -> None:
        self.seeder = WorkerSeeder(rank) if seed else None
        self.opencv = opencv
        self.arena: BatchArena | None = None  # set by the loader around each fork of its workers

    def __call__(self, worker_id: int) -> None:
        limit_library_threads(opencv=self.opencv)
        if self.arena is not None:
            self.arena.install(worker_id)
        if self.seeder is not None:
            self.seeder(worker_id)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "arena": None}  # a spawned worker has no arena (see BatchArena)
