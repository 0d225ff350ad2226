"""``num_workers=auto``: probe loader settings for a few seconds each and keep the fastest.

Each candidate (worker count, and prefetch depth for worker processes) gets a fresh DataLoader; the
first batch (worker start-up) is not timed, then batches are counted for ``seconds``, or until
``max_batches`` have come and :data:`LEAST_SECONDS` have passed. A loader whose pass ends sooner is
read again, as the next epoch would be: with the workers kept (``persistent_workers``, the default),
a probe then sees their steady pace and the pause between passes, not the rest of their start-up.
On a stream of 8 batches a pass, one pass after the first batch was a few milliseconds, mostly the
second worker starting: the same setting read 3,500 to 15,000 samples/s run to run, and the choice
between workers and none was a coin flip. Throughput, not latency, decides. The search is short on
purpose: on 2 cores it tries 5 settings in a few seconds, against minutes for timing full epochs.

A loader that is fast alone can still starve training: loader threads share the interpreter with
the training thread, which needs it to launch every step's kernels. On a 16-core H200 machine,
threads fed a ResNet at 0.27-0.52 of its speed against 0.53-0.78 for worker processes (issue 25),
though alone they loaded well. So while each candidate is probed, a stand-in for the training
thread (:class:`_Witness`) runs plain Python in a thread of its own and counts how much of its solo
pace it keeps; a candidate that leaves it under :data:`MIN_PACE` is not chosen while another keeps it.

``num_workers=0`` is weighed apart (:func:`in_thread_wins`): its batches are made in the training
thread itself, between the steps, so there is no loader beside the training thread for the stand-in
to measure: its pace there read anything from 3% to 82% on the 2-core machine, so in-thread loading
was chosen or not by chance, and not where it trains fastest (a stream of table rows: 1.55-1.73 s
in the training thread, 1.99-2.09 s with the worker process the pace rule chose).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from chute.collate import samples_in
from chute.loader import LoaderSettings

#: The least share of its solo pace the training thread's stand-in must keep for a candidate to be chosen.
MIN_PACE = 0.5

#: The least time a probe counts batches for, however fast ``max_batches`` come (unless ``seconds`` is shorter).
LEAST_SECONDS = 0.2


def candidates(settings: LoaderSettings, cpus: int | None = None, threads: bool = True) -> list[LoaderSettings]:
    """Worker processes 0, 1, 2, 4, 8 and all CPUs but one (at most 32; 2 on 2 CPUs), prefetch 2 and 4
    with workers; with ``threads``, also the threaded backend with 1 thread and as many as worker
    processes at most (prefetch 2)."""
    cpus = cpus or os.cpu_count() or 1
    most = min(32, max(cpus - 1, min(cpus, 2)))  # one core left for training, except on the smallest machines
    counts = sorted({0, 1, *[c for c in (2, 4, 8) if c <= most], most})
    # worker processes are kept between a probe's passes as they will be between epochs (null: kept)
    keep = settings.persistent_workers is not False
    out = []
    for workers in counts:
        for prefetch in (None,) if workers == 0 else (2, 4):
            out.append(
                dataclasses.replace(
                    settings,
                    num_workers=workers,
                    prefetch_factor=prefetch,
                    persistent_workers=keep and workers > 0,
                    timeout=0.0,
                    backend="torch",
                )
            )
    if threads:
        for count in sorted({1, most}):
            out.append(
                dataclasses.replace(
                    settings,
                    num_workers=count,
                    prefetch_factor=2,
                    persistent_workers=None,
                    timeout=0.0,
                    backend="threads",
                )
            )
    return out


class _Witness:
    """A stand-in for the training thread: plain Python in a thread, counting how far it gets.

    ``pace()`` is its progress per second since ``start()``; against its pace with the loader idle,
    the share of the interpreter (and of a core) the training loop would keep beside a loader.
    """

    def __init__(self) -> None:
        self._count = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._since = 0.0
        self.pace: float | None = None  # set by stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            sum(range(300))  # ~2-5 us of bytecode, as a training step's Python between kernel launches
            self._count += 1
            # then give the interpreter up, as a training thread does waiting on the device: a thread
            # that never did would itself starve the loader's threads (on a GPU, the pin-memory and
            # device-feed threads: every probe there read ~30 images/s with a spinning stand-in)
            time.sleep(0)

    def start(self) -> None:
        self._stop.clear()
        self._count, self._since = 0, time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True, name="chute-autotune-witness")
        self._thread.start()

    def stop(self) -> float:
        """Stop; its pace (iterations per second) since ``start`` (kept in :attr:`pace`)."""
        if self.pace is None and self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.pace = self._count / max(time.perf_counter() - self._since, 1e-9)
        return self.pace or 0.0


def probe(
    loader: Iterable[Any],
    seconds: float,
    max_batches: int,
    witness: _Witness | None = None,
    least_seconds: float = LEAST_SECONDS,
) -> tuple[float, float]:
    """Samples/s of ``loader`` after its first batch, over ``seconds``, or until ``max_batches`` have come
    and ``least_seconds`` have passed (with ``witness`` running meanwhile, if given), and the CPU seconds
    a sample took of the thread reading it (a worker's batch unpickled, a thread's handed over; with
    ``num_workers=0``, all of the loading). A pass that ends sooner is followed by another, timed with
    the start of each (a pass that brings nothing ends the probe)."""
    iterator = iter(loader)
    try:
        next(iterator)  # start-up: worker processes, first reads
    except StopIteration:
        return 0.0, 0.0
    if witness is not None:
        witness.start()
    samples, batches, start, cpu = 0, 0, time.perf_counter(), time.thread_time()
    try:
        for batch in _passes(loader, iterator):
            samples += samples_in(batch) or 1  # unsized batches count as one
            batches += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds or (batches >= max_batches and elapsed >= least_seconds):
                break
        elapsed, used = time.perf_counter() - start, time.thread_time() - cpu
    finally:
        if witness is not None:
            witness.stop()
    del iterator  # shuts the probe's workers down, unless they are persistent (see _release)
    if elapsed <= 0 or not samples:
        return 0.0, 0.0
    return samples / elapsed, used / samples


def _passes(loader: Iterable[Any], started: Iterator[Any]) -> Iterator[Any]:
    """The batches of ``loader``, pass after pass, from the pass ``started``; until a new pass brings none
    (as a loader that is its own iterator, a generator say, does after its one pass)."""
    iterator, first = started, True
    while True:
        brought = first  # the started pass has brought the probe's first batch
        for batch in iterator:
            brought = True
            yield batch
        if not brought:
            return
        iterator, first = iter(loader), False


def _release(loader: Any) -> None:
    """Stop the worker processes a probed DataLoader keeps between passes (``persistent_workers``)."""
    kept = getattr(loader, "_iterator", None)
    if kept is not None and hasattr(kept, "_shutdown_workers"):
        kept._shutdown_workers()
        loader._iterator = None


def _solo_pace(seconds: float = 0.2) -> float:
    witness = _Witness()
    witness.start()
    time.sleep(seconds)
    return witness.stop()


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
    solo = _solo_pace()
    for candidate in candidates(settings, cpus, threads):
        in_thread = candidate.num_workers == 0 and candidate.backend == "torch"
        witness = None if in_thread else _Witness()
        loader = make_loader(candidate)
        try:
            rate, taken = probe(loader, seconds, max_batches, witness)
        finally:
            _release(loader)
            del loader
        pace: float | None = None  # the share of its solo pace the stand-in kept (None: no loader beside it)
        if witness is not None:
            pace = witness.pace / solo if witness.pace is not None and solo > 0 else 1.0
        results.append(
            {
                "backend": candidate.backend,
                "num_workers": candidate.num_workers,
                "prefetch_factor": candidate.prefetch_factor,
                "samples_per_s": round(rate, 1),
                "training_pace": None if pace is None else round(pace, 2),
                "reader_us_per_sample": round(taken * 1e6, 2),  # CPU of the thread reading the loader
            }
        )
    beside = [i for i, r in enumerate(results) if r["training_pace"] is not None]
    eligible = [i for i in beside if results[i]["training_pace"] >= MIN_PACE] or beside
    best = max(eligible, key=lambda i: results[i]["samples_per_s"]) if eligible else None
    alone = [i for i, r in enumerate(results) if r["training_pace"] is None]
    if alone and (best is None or in_thread_wins(results[alone[0]], results[best])):
        best = alone[0]
    assert best is not None
    choice = results[best]
    threaded = choice["backend"] == "threads"
    processes = not threaded and choice["num_workers"] > 0
    chosen = dataclasses.replace(  # the settings that only worker processes take are dropped without them
        settings,
        num_workers=choice["num_workers"],
        prefetch_factor=choice["prefetch_factor"],
        backend=choice["backend"],
        persistent_workers=settings.persistent_workers if processes else None,
        multiprocessing_context=settings.multiprocessing_context if processes else None,
        timeout=settings.timeout if threaded or processes else 0.0,
    )
    table = ", ".join(
        f"{_short(r['backend'])}{r['num_workers']}/p{r['prefetch_factor'] or '-'}: {r['samples_per_s']:,.0f}/s"
        + (" (in the training thread)" if r["training_pace"] is None else f" (pace {r['training_pace']:.0%})")
        for r in results
    )
    rank_zero_info(
        f"loader autotune ({time.perf_counter() - started:.1f} s; w = worker processes, t = threads; pace: what "
        f"a training thread keeps, under {MIN_PACE:.0%} not chosen): {table} -> "
        f"backend={chosen.backend}, num_workers={chosen.num_workers}, prefetch_factor={chosen.prefetch_factor}"
    )
    return chosen, results


def in_thread_wins(alone: dict[str, Any], beside: dict[str, Any]) -> bool:
    """Whether loading in the training thread (``alone``: ``num_workers=0``) trains faster than the best
    loader running beside it (``beside``), from what their probes measured.

    Per sample, in-thread loading adds ``1/R0`` to the training thread's own time ``S``: ``1 / (S +
    1/R0)`` samples a second. With a loader beside it, the training thread reads each batch itself
    (``c`` a sample: the CPU the probe's reading thread spent) and keeps a share ``p`` of its time
    for the rest, and it cannot get more than that loader's rate ``R``: ``min(R, 1 / (c + S/p))``.
    The stand-in measured its pace beside the probe's reading thread, so its loss includes that
    reading, about ``c R`` of its time, which the training thread does itself rather than lose:
    ``p = pace + c R`` (at most 1). ``S`` is the model's, which the probes cannot know; this takes a
    model as fast as that loader (``S = 1/R``), where the choice matters most. An empty loader (no
    rate from any) is read in the training thread, without workers."""
    r0, rate = float(alone["samples_per_s"]), float(beside["samples_per_s"])
    if rate <= 0:
        return True
    if r0 <= 0:
        return False
    step = 1.0 / rate
    reading = float(beside.get("reader_us_per_sample") or 0.0) * 1e-6
    kept = min(1.0, float(beside["training_pace"]) + reading * rate)
    if kept <= 0:
        return True
    return 1.0 / (step + 1.0 / r0) > min(rate, 1.0 / (reading + step / kept))


def _short(backend: str) -> str:
    return "t" if backend == "threads" else "w"
