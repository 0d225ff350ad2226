"""Worker diagnostics: what each DataLoader worker is loading, so a worker that dies is named with its samples."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset


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
    looking through views (``.dataset``); else ``"sample <index>"``."""
    inner: Any = dataset
    for _ in range(4):
        describe = getattr(inner, "describe", None)
        if callable(describe):
            return str(describe(index))
        path = getattr(getattr(inner, "index", None), "path", None)
        if callable(path):
            return str(path(index))
        inner = getattr(inner, "dataset", None)
        if inner is None:
            break
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


class WorkerDiedError(RuntimeError):
    """A DataLoader worker process ended without returning its batch; the message names the samples."""


class GuardedIterator:
    """A DataLoader iterator whose worker deaths name the worker and the samples it was loading.

    torch notices a dead worker within seconds (``SIGCHLD`` and a liveness check on every queue
    wait) and raises ``DataLoader worker (pid N) ...``; this adds which worker that was and what it
    was loading (from the :class:`TrackedDataset`'s :class:`InFlight` table).
    """

    def __init__(self, iterator: Any, dataset: TrackedDataset) -> None:
        self.iterator, self.dataset = iterator, dataset

    def __iter__(self) -> GuardedIterator:
        return self

    def __len__(self) -> int:
        return len(self.iterator)

    def __next__(self) -> Any:
        try:
            return next(self.iterator)
        except RuntimeError as err:
            if not _DEATH.search(str(err)):
                raise  # an error raised in the worker keeps its type and message (and names its samples)
            raise WorkerDiedError(self._explain(str(err))) from err

    def _explain(self, message: str) -> str:
        pids = {int(p) for p in re.findall(r"\d+", message.split("pid", 1)[1])} if "pid" in message else set()
        workers = getattr(self.iterator, "_workers", [])
        dead = [w for w, process in enumerate(workers) if process.pid in pids] or list(range(len(workers)))
        lines = [message.rstrip(".") + "."]
        for w in dead:
            loading = self.dataset.in_flight.samples(w)
            if loading is None:
                continue
            head, count = loading
            pid = workers[w].pid if w < len(workers) else "?"
            first = self.dataset.describe(head[0]) if count == 1 else ""
            where = f"sample {head[0]} ({first})" if count == 1 and first else f"{count} samples {head[:8]}"
            lines.append(f"Worker {w} (pid {pid}) was loading {where}.")
        lines.append(
            "A worker dies when it is killed (e.g. out of memory: fewer loader.num_workers or a smaller "
            "loader.batch_size) or crashes in native code (e.g. a decoder on a corrupt file)."
        )
        return " ".join(lines)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.iterator, name)
