"""``ThreadedLoader``: a minimal loader for cheap, batched reads, without worker processes.

Where a batch is one gather from an in-memory or memory-mapped array (precomputed images, tables),
worker processes spend more on shipping the batch through IPC than on making it. This loader runs
the batch sampler and ``dataset.__getitems__`` in background threads (torch's indexing releases
the GIL), keeps ``prefetch`` batches ready in a queue, and pins them on CUDA machines. It keeps the
DataModule contract: ``len``, ``sampler`` (Lightning calls its ``set_epoch``), the sampler's
distributed split and its ``state_dict``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

_DONE = object()


class ThreadedLoader:
    """Iterate ``sampler`` (index batches) and yield ``collate_fn(dataset.__getitems__(batch))``.

    Args:
        dataset: A dataset with ``__getitems__`` (or ``__getitem__``) that gathers a whole batch.
        sampler: Yields one list/tensor of indices per batch (e.g. :class:`~chute.samplers.BatchIndexSampler`).
        collate_fn: Applied to what the dataset returns (default: as is).
        prefetch: Batches prepared ahead, per thread.
        threads: Background threads fetching batches (order is kept); 0 fetches each batch in the
            calling thread when it is asked for.
        pin_memory: Pin batches (only useful with CUDA).
        timeout: Seconds to wait for a batch before raising (0 waits forever).
    """

    def __init__(
        self,
        dataset: Any,
        sampler: Any,
        collate_fn: Callable[[Any], Any] | None = None,
        *,
        prefetch: int = 2,
        threads: int = 2,
        pin_memory: bool = False,
        timeout: float = 0.0,
    ) -> None:
        if prefetch < 1 or threads < 0:
            raise ValueError(f"prefetch={prefetch} must be >= 1 and threads={threads} >= 0")
        self.dataset = dataset
        self.sampler = sampler
        self.collate_fn = collate_fn
        self.prefetch = prefetch
        self.threads = threads
        self.pin_memory = pin_memory
        self.timeout = timeout
        self.num_workers = 0  # no worker processes (for code that asks a loader for it)

    def __len__(self) -> int:
        return len(self.sampler)

    def _fetch(self, batch: Any) -> Any:
        getitems = getattr(self.dataset, "__getitems__", None)
        data = getitems(batch) if callable(getitems) else [self.dataset[int(i)] for i in batch]
        data = self.collate_fn(data) if self.collate_fn is not None else data
        return _pin(data) if self.pin_memory else data

    def __iter__(self) -> Iterator[Any]:
        batches = list(self.sampler)  # the sampler runs here, in the caller's thread (epoch, state)
        if self.threads == 0:
            yield from (self._fetch(batch) for batch in batches)
            return
        slots: list[queue.Queue[Any]] = [queue.Queue(maxsize=1) for _ in batches]
        ahead = threading.Semaphore(self.prefetch * self.threads)
        stop = threading.Event()
        position = iter(range(len(batches)))
        lock = threading.Lock()

        def work() -> None:
            while not stop.is_set():
                ahead.acquire()  # before taking an index: indices go out in order, so no deadlock
                with lock:
                    i = next(position, None)
                if i is None or stop.is_set():
                    return
                try:
                    slots[i].put(self._fetch(batches[i]))
                except BaseException as err:  # surface in the consumer, with its traceback
                    slots[i].put(_Failure(err))
                    return

        workers = [threading.Thread(target=work, daemon=True) for _ in range(min(self.threads, max(len(batches), 1)))]
        for thread in workers:
            thread.start()
        try:
            for n, slot in enumerate(slots):
                try:
                    item = slot.get(timeout=self.timeout or None)
                except queue.Empty:
                    raise RuntimeError(
                        f"ThreadedLoader timed out after {self.timeout} s waiting for batch {n} "
                        f"(indices {_head(batches[n])}); raise loader.timeout or find the slow sample."
                    ) from None
                ahead.release()
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            stop.set()
            for _ in workers:
                ahead.release()


def _head(batch: Any, n: int = 8) -> str:
    items = [int(i) for i in list(batch)[:n]]
    return f"{items}{' ...' if len(batch) > n else ''}"


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _pin(data: Any) -> Any:
    if isinstance(data, torch.Tensor):
        return data.pin_memory()
    if isinstance(data, (tuple, list)):
        return type(data)(_pin(d) for d in data)
    if isinstance(data, dict):
        return {k: _pin(v) for k, v in data.items()}
    return data
