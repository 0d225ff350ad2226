"""Worker diagnostics: what each DataLoader worker is loading, so a worker that dies is named with its samples."""

from __future__ import annotations

import re
import signal
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Subset


class InFlight:
    """Which samples each DataLoader worker is loading, in shared memory, so the main process can
    name them when a worker dies (killed, out of memory, or crashing in native code).

    Row ``w`` holds worker ``w``'s current samples: ``[count, index, index, ...]`` (at most
    ``capacity`` indices), ``count = -1`` when idle.
    """

    def __init__(self, workers: int, capacity: int) -> None:
        self.capacity = max(int(capacity), 1)
        with torch.inference_mode(False):  # updated from any thread, in or out of inference mode
            self.table = torch.full((max(workers, 1), self.capacity + 1), -1, dtype=torch.int64).share_memory_()

    def mark(self, indices: Sequence[Any]) -> None:
        info = torch.utils.data.get_worker_info()
        if info is None:
            return
        row = self.table[info.id]
        head = [int(i) for i in list(indices)[: self.capacity]]
        row[1 : len(head) + 1] = torch.tensor(head, dtype=torch.int64)
        row[0] = len(indices)

    def clear(self) -> None:
        info = torch.utils.data.get_worker_info()
        if info is not None:
            self.table[info.id, 0] = -1

    def samples(self, worker: int) -> tuple[list[int], int] | None:
        """``(first indices, count)`` worker ``worker`` was loading, or ``None`` if it was idle."""
        count = int(self.table[worker, 0])
        if count < 0:
            return None
        return self.table[worker, 1 : min(count, self.capacity) + 1].tolist(), count


class TrackedDataset(Dataset[Any]):
    """A view of ``dataset`` that records in :class:`InFlight` what each worker is loading.

    Per-sample datasets are tracked sample by sample (the error names the exact sample); datasets
    that gather whole batches (``__getitems__``) are tracked by batch. Other attributes
    (``targets``, ``set_epoch``, ``reseed``, ...) are the wrapped dataset's.
    """

    def __init__(self, dataset: Dataset[Any], in_flight: InFlight) -> None:
        self.dataset = dataset
        self.in_flight = in_flight

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: Any) -> Any:
        self.in_flight.mark(item if isinstance(item, (list, tuple)) else [item])
        out = self.dataset[item]
        self.in_flight.clear()
        return out

    def __getitems__(self, indices: Sequence[Any]) -> Any:
        getitems = getattr(self.dataset, "__getitems__", None)
        if callable(getitems):
            self.in_flight.mark(indices)
            out = getitems(indices)
        else:
            out = []
            for i in indices:
                self.in_flight.mark([i])
                try:
                    out.append(self.dataset[i])
                except Exception as err:
                    name_samples(err, self.dataset, [i])
                    raise
        self.in_flight.clear()
        return out

    def describe(self, index: int) -> str:
        return describe_sample(self.dataset, index)

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "in_flight"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def describe_sample(dataset: Any, index: int) -> str:
    """Sample ``index``'s file or row where the dataset can say (``describe(i)`` or an ``index.path(i)``),
    looking through views (``.dataset``; a ``Subset``'s indices mapped); else ``"sample <index>"``.

    Never raises: it names the sample of an error being raised, which it must not replace.
    """
    inner: Any = dataset
    i = index
    try:
        for _ in range(4):
            describe = getattr(inner, "describe", None)
            if callable(describe):
                return str(describe(i))
            path = getattr(getattr(inner, "index", None), "path", None)
            if callable(path):
                return str(path(i))
            if isinstance(inner, Subset):
                i = int(inner.indices[i])
            inner = getattr(inner, "dataset", None)
            if inner is None:
                break
    except Exception:  # a view this function does not know: say less rather than mask the error
        pass
    return f"sample {index}"


def name_samples(error: BaseException, dataset: Any, indices: Sequence[Any]) -> None:
    """Add to ``error`` which samples were being loaded (shown under its message and traceback, also
    in the copy torch re-raises from a DataLoader worker), unless it names one already."""
    if not hasattr(error, "add_note") or getattr(error, "_chute_named", False):
        return  # Python 3.10 has no exception notes
    head = [int(i) for i in list(indices)[:8]]
    if len(head) == 1:
        where = f"sample {head[0]} ({describe_sample(dataset, head[0])})"
    else:
        where = f"a batch of {len(indices)} samples {head}{' ...' if len(indices) > 8 else ''}"
    error.add_note(f"chute: raised while loading {where}.")
    error._chute_named = True  # type: ignore[attr-defined]


# torch's messages for a worker that ended (killed by a signal, exited, crashed); an exception a
# worker raised is re-raised as "Caught <type> in DataLoader worker process <n>" instead.
_DEATH = re.compile(r"DataLoader worker \(pid")
_HELD: list[str] = []  # the last deaths torch's SIGCHLD handler reported (see hold_worker_deaths)
_FETCHING: set[int] = set()  # threads inside GuardedIterator.__next__, where a death may be raised at once


class WorkerDiedError(RuntimeError):
    """A DataLoader worker process ended without returning its batch; the message names the samples."""


class GuardedIterator:
    """A DataLoader iterator whose worker deaths name the worker and the samples it was loading.

    torch notices a dead worker through ``SIGCHLD`` and a liveness check on every queue wait (at
    least every 5 s) and raises ``DataLoader worker (pid N) ...``. Raised from the signal handler,
    that error could surface anywhere the training thread happened to be: between batches, in the
    model's step, or in the middle of receiving another worker's batch (seen: an ``EOFError`` of a
    shared-memory handover turned into torch's raw error). chute's loaders hold it back
    (:func:`hold_worker_deaths`) so it surfaces here, on the next batch, where any error with a dead
    worker becomes a :class:`WorkerDiedError` naming which worker that was, how it ended and what
    it was loading (from the :class:`TrackedDataset`'s :class:`InFlight` table).
    """

    def __init__(self, iterator: Any, dataset: TrackedDataset) -> None:
        self.iterator, self.dataset = iterator, dataset

    def __iter__(self) -> GuardedIterator:
        return self

    def __len__(self) -> int:
        return len(self.iterator)

    def __next__(self) -> Any:
        if _HELD and (dead := self._dead()):  # a death noted by the signal handler: say so at once
            raise WorkerDiedError(self._explain(_HELD[-1], dead))
        me = threading.get_ident()
        _FETCHING.add(me)  # here torch's signal handler may raise: it is caught just below
        try:
            return next(self.iterator)
        except StopIteration:
            raise
        except Exception as err:
            dead = self._dead()
            if dead or (isinstance(err, RuntimeError) and _DEATH.search(str(err))):
                raise WorkerDiedError(self._explain(str(err), dead)) from err
            raise  # an error raised in the worker keeps its type and message (and names its samples)
        finally:
            _FETCHING.discard(me)

    def _dead(self) -> list[int]:
        """The workers that have ended with an error or a signal."""
        workers = getattr(self.iterator, "_workers", [])
        return [w for w, process in enumerate(workers) if not process.is_alive() and process.exitcode]

    def _explain(self, message: str, dead: list[int]) -> str:
        workers = getattr(self.iterator, "_workers", [])
        if not dead:
            pids = {int(p) for p in re.findall(r"\d+", message.split("pid", 1)[1])} if "pid" in message else set()
            dead = [w for w, process in enumerate(workers) if process.pid in pids] or list(range(len(workers)))
        lines = [message.rstrip(" .") + "." if _DEATH.search(message) else "A DataLoader worker ended."]
        stopped = bool(dead)  # every dead worker ended by a stop signal: the job was being stopped
        for w in dead:
            process = workers[w] if w < len(workers) else None
            pid = process.pid if process is not None else "?"
            how = _ending(process.exitcode if process is not None else None)
            stopped = stopped and process is not None and -(process.exitcode or 0) in _STOP_SIGNALS
            loading = self.dataset.in_flight.samples(w)
            if loading is None:
                lines.append(f"Worker {w} (pid {pid}) {how}.")
                continue
            head, count = loading
            first = self.dataset.describe(head[0]) if count == 1 else ""
            where = f"sample {head[0]} ({first})" if count == 1 and first else f"{count} samples {head[:8]}"
            lines.append(f"Worker {w} (pid {pid}) {how} while loading {where}.")
        if stopped:
            lines.append(
                "That is a request to stop, not a fault: a SIGTERM sent to every process of the job (a "
                "scheduler's preemption or cancellation, torchrun's shutdown, a kill of the process group) "
                "reaches the DataLoader's workers too. Where the trainer got it as well, the run was stopping."
            )
        else:
            lines.append(
                "A worker dies when it is killed (e.g. out of memory: fewer loader.num_workers or a smaller "
                "loader.batch_size) or crashes in native code (e.g. a decoder on a corrupt file)."
            )
        return " ".join(lines)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.iterator, name)


# Signals that ask a process to stop (a scheduler's, a terminal's): a worker ended by one was not short of memory.
_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def _ending(exitcode: int | None) -> str:
    """How a worker process ended, from its exit code (negative: the signal)."""
    if exitcode is None or exitcode == 0:
        return "ended"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def hold_worker_deaths() -> None:
    """In the main thread: make torch's ``SIGCHLD`` handler note a dead DataLoader worker instead of
    raising wherever this thread happens to be; the death surfaces on the next batch instead, named
    by :class:`GuardedIterator`. While this thread waits for a batch there, the handler raises at
    once, as torch's does (the wait would otherwise last until torch's next liveness check, 5 s).

    Installs torch's handler first (as its DataLoaders do, once per process) and wraps it; the
    handler stays for the process, for every DataLoader in it. A no-op off the main thread and where
    there is no ``SIGCHLD``.
    """
    if not hasattr(signal, "SIGCHLD") or threading.current_thread() is not threading.main_thread():
        return
    from torch.utils.data._utils import signal_handling

    signal_handling._set_SIGCHLD_handler()
    current = signal.getsignal(signal.SIGCHLD)
    if not callable(current) or getattr(current, "_chute_holds", False):
        return

    def held(signum: int, frame: Any) -> None:
        try:
            current(signum, frame)
        except RuntimeError as err:
            fetching = threading.get_ident() in _FETCHING and not _in_finalizer(frame)
            if not _DEATH.search(str(err)) or fetching:
                raise  # waiting for a batch: raised there at once, and named (GuardedIterator)
            del _HELD[:-7]
            _HELD.append(str(err))

    held._chute_holds = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGCHLD, held)


def _in_finalizer(frame: Any) -> bool:
    """Whether the signal arrived inside a finalizer (``__del__``, or torch shutting an iterator's
    workers down): the garbage collector can run one in the middle of a fetch (another, older
    iterator's), and an error raised there is only printed ("Exception ignored in ..."), while the
    fetch goes on. The death is held instead; the fetch's own liveness check or the next batch
    names it."""
    while frame is not None:
        if frame.f_code.co_name in ("__del__", "_shutdown_workers"):
            return True
        frame = frame.f_back
    return False


def stops_workers_when_collected(iterator: Any) -> Any:
    """Let the garbage collector stop ``iterator``'s workers as promptly as dropping it does; returns it.

    An iterator with workers in a reference cycle (persistent workers of a loader that a DataModule
    and a Trainer hold, a pass kept by a traceback) is finalized by the collector, which first runs
    the weak-reference finalizers of everything in the cycle: each of its index queues is told to
    stop its feeding thread. Its own ``__del__`` runs after that and sends each worker the ``None``
    that ends it through those stopped queues: it never arrives, and each worker is waited for
    5 s and then killed (``torch.utils.data`` ``_shutdown_workers``). Keeping the queues reachable
    from here until the iterator is gone keeps them out of the cycle's garbage, so the workers get
    their ``None`` and exit at once.
    """
    queues = list(getattr(iterator, "_index_queues", ()))
    if queues:
        weakref.finalize(iterator, queues.clear)
    return iterator
