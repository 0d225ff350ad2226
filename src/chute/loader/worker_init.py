"""What every DataLoader worker process does as it starts: one thread per library, then its seeds.

A worker is one of ``num_workers`` processes sharing the machine's cores, and its parallelism is the
number of workers. But libraries size their own thread pools to the whole machine: OpenCV's
(large resizes; ``cv2.LUT`` normalizing a CPU trainer's batch where ``chute._pixels`` is not
built) gets ``os.cpu_count()`` threads, OpenBLAS (NumPy, SciPy) likewise, so 15 workers on 16
cores could run ~250 OS threads contending for 16 cores (issue 25). torch already runs one
intra-op thread in a worker; chute does the same for OpenCV, OpenBLAS and OpenMP (through
``threadpoolctl``). libjpeg-turbo and chute's decoder use no threads of their own, and PyAV
decodes with one (``decode_frames(threads=1)``).

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

import atexit
import contextlib
import functools
import gc
import os
import sys
from collections.abc import Iterator
from typing import Any

import torch

from chute.loader.buffers import BatchArena, send_batches_lightly
from chute.loader.seeding import WorkerSeeder

ENV = "CHUTE_LIBRARY_THREADS"
_OPENCV_THREADS = "OPENCV_FOR_THREADS_NUM"  # read by OpenCV when it starts its pool (its import)


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
    from threadpoolctl import threadpool_info, threadpool_limits

    torch.set_num_threads(threads)
    cv2: Any = sys.modules.get("cv2")
    if cv2 is None:
        # Not loaded here (nor in the parent): OpenCV sizes its pool from this variable when it is
        # imported, if this process ever imports it; importing it now cost each worker's start ~20 ms
        # (more with the others starting beside it) where nothing of OpenCV's runs, a table's, say.
        pending = os.environ.setdefault(_OPENCV_THREADS, str(threads))  # a user's own setting is kept
        opencv_threads = int(pending) if pending.isdigit() else threads
    else:
        if opencv and cv2.getNumThreads() != threads:  # forked under forking_workers(): inherited already
            cv2.setNumThreads(threads)
        opencv_threads = cv2.getNumThreads()
    threadpool_limits(limits=threads)  # OpenBLAS and OpenMP runtimes loaded in this process
    counts = {"torch": torch.get_num_threads(), "opencv": opencv_threads}
    for pool in threadpool_info():
        name = str(pool.get("internal_api"))
        counts[name] = max(counts.get(name, 0), int(pool.get("num_threads", 0)))
    return counts


_forking = 0  # > 0 while forking_workers() is open in this process: its forks are loader workers


def _after_fork_in_child() -> None:
    """First thing in a forked child (before any of its Python code): a loader worker freezes what
    it inherited, so its collector never frees, and never finalizes, the parent's objects."""
    if _forking:
        gc.freeze()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _threads_call_into_python() -> bool:
    """Whether native threads of another library may take Python thread states in this process:
    torch.distributed's (gloo's ``pt_gloo_runloop`` after each collective), CUDA's, Ray's."""
    ray: Any = sys.modules.get("ray")
    return (
        (torch.distributed.is_available() and torch.distributed.is_initialized())
        or torch.cuda.is_initialized()
        or (ray is not None and ray.is_initialized())
    )


@functools.cache
def _collect_at_exit() -> None:
    """Once a fork has left the parent's garbage uncollected: collect it as the process exits,
    while the libraries its finalizers call are still running (left to the interpreter's own
    teardown, an uncollected cycle of a test process that had read LitData over S3 after Ray
    aborted it: "PyGILState_Release: thread state ... must be current", after "Event loop is
    closed")."""
    atexit.register(gc.collect)


@contextlib.contextmanager
def forking_workers() -> Iterator[None]:
    """Around the fork of worker processes, in the parent.

    - The parent's garbage stays the parent's: each worker freezes what it inherits as it is forked
      (:func:`_after_fork_in_child`), so a cycle the parent had not yet collected is never freed in a
      worker. Freed there, its finalizers ran against the parent's resources: an earlier loader's
      iterator finalized in a new loader's worker (its workers "shut down", its shared-memory arena
      retired) killed that worker with SIGSEGV in 2 of 9 tests of tests/test_worker_failures.py.
    - Where native threads of another library call into Python (:func:`_threads_call_into_python`:
      a DDP rank, a CUDA process, a Ray client), the parent collects its garbage first, as every
      fork did before. It is the H200-tested cure for a cycle holding a CUDA tensor freed in a
      worker ("CUDA error: initialization error" when validation workers forked mid-fit), and its
      0.2-0.3 s keeps the fork away from CPython 3.11's fork bug (python/cpython#112275, fixed in
      3.12): a native thread creating its Python thread state holds the interpreter's list lock
      without the GIL, and a child forked then deadlocks inside ``os.fork`` before running any
      Python. Seen here without the collection: a 3-rank DDP contract run hung with a worker stuck
      in ``_PyThreadState_DeleteExcept`` while the rank's ``pt_gloo_runloop`` thread held a thread
      state (gdb), 1 run of 4; ``gc.freeze()`` in the parent had hung 3 of 3 the same way. Elsewhere
      (a single CPU process, the common case) the collection is skipped: it cost 0.2-0.3 s of every
      loader start in a small training process (70% of a 2-worker loader's time to its first
      batch here), more in a larger one; such a process collects once at exit instead
      (:func:`_collect_at_exit`).
    - OpenCV at one thread (its pool's threads joined), so the children inherit a single-threaded
      OpenCV; only where OpenCV is loaded already (otherwise the children import it afresh) and the
      limits are on (:func:`library_threads`).

    The parent's own settings are restored after.
    """
    global _forking
    cv2: Any = sys.modules.get("cv2")
    threads = library_threads()
    hold = cv2 is not None and threads is not None
    before = cv2.getNumThreads() if hold else 0
    if hold:
        cv2.setNumThreads(threads)
    if _threads_call_into_python():
        gc.collect()  # the parent's garbage goes here, and other threads settle (see above)
    else:
        _collect_at_exit()
    _forking += 1
    try:
        yield
    finally:
        _forking -= 1
        if hold:
            cv2.setNumThreads(before)


class WorkerInit:
    """``worker_init_fn`` of chute's DataLoaders: :func:`limit_library_threads`; batches sent to the
    main process without a shared-memory file per tensor (the arena's slots where the workers were
    forked with one, small tensors inside the message: :func:`~chute.loader.buffers.send_batches_lightly`);
    then (if ``seed``) :class:`~chute.loader.seeding.WorkerSeeder`'s per-worker seeds.

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
        send_batches_lightly()
        if self.arena is not None:
            self.arena.install(worker_id)
        if self.seeder is not None:
            self.seeder(worker_id)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "arena": None}  # a spawned worker has no arena (see BatchArena)
