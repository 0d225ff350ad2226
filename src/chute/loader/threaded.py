"""``ThreadedLoader``: a minimal loader for batched reads, without worker processes.

Where making a batch releases the GIL (a gather from an in-memory or memory-mapped array, crop-aware
JPEG decoding, tables), worker processes spend more on shipping the batch through IPC (a fresh
shared-memory segment per batch) than they save. This loader runs ``dataset.__getitems__`` for
whole batches in background threads, keeps ``prefetch`` batches per thread ready, in order, and on
a CUDA machine copies each batch to the device itself: through pinned staging buffers that are
reused batch after batch, on a side CUDA stream, so the copy overlaps the training step and the
consumer's stream only waits for it on the GPU; work given as ``after_copy`` (a DataModule's batch
hook: normalization, random crops) runs there too, on the same side stream, so the training
thread receives finished batches. It keeps the DataModule contract: ``len``,
``sampler`` (Lightning calls its ``set_epoch``), the sampler's distributed split and its
``state_dict``.
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
        device: A CUDA device: batches arrive there (see the module docstring); ``None`` keeps
            them on the CPU (pinned with ``pin_memory``).
        after_copy: Applied to each batch on ``device`` after its copy, in the loader's thread and
            on the copy's stream (ignored without ``device``).
        fetch: Reads one batch of indices (chute passes a :class:`~chute.loader.BatchFetch`, which
            names the samples of an error); default: ``__getitems__``, else item by item.
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
        device: torch.device | str | None = None,
        fetch: Callable[[Any], Any] | None = None,
        after_copy: Callable[[Any], Any] | None = None,
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
        self.device = torch.device(device) if device is not None else None
        self.fetch = fetch  # reads one batch of indices (default: ``__getitems__``, else item by item)
        self.after_copy = after_copy
        self._copier: DeviceCopy | None = None
        # What Lightning and torch tooling read off a loader: no worker processes, and the sampler
        # (of index batches) in the DataLoader's ``sampler`` slot, as chute's DataLoaders have it.
        self.num_workers = 0
        self.batch_sampler = None
        self.batch_size = getattr(sampler, "batch_size", None)
        self.drop_last = bool(getattr(sampler, "drop_last", False))

    def __len__(self) -> int:
        return len(self.sampler)

    def _fetch(self, batch: Any) -> Any:
        if self.fetch is not None:
            data = self.fetch(batch)
        else:
            getitems = getattr(self.dataset, "__getitems__", None)
            data = getitems(batch) if callable(getitems) else [self.dataset[int(i)] for i in batch]
        data = self.collate_fn(data) if self.collate_fn is not None else data
        if self.device is not None and self.device.type == "cuda":
            if self._copier is None:
                self._copier = DeviceCopy(self.device, after=self.after_copy)
            return self._copier(data)
        return _pin(data) if self.pin_memory else data

    def _ready(self, item: Any) -> Any:
        """What the consumer gets: a device batch once its copy is ordered before the consumer's work."""
        return item.wait() if isinstance(item, _InFlight) else item

    def __iter__(self) -> Iterator[Any]:
        batches = list(self.sampler)  # the sampler runs here, in the caller's thread (epoch, state)
        if self.threads == 0:
            yield from (self._ready(self._fetch(batch)) for batch in batches)
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
                yield self._ready(item)
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
    return _map_tensors(data, lambda t: t.pin_memory())


class StagingPool:
    """Page-locked host buffers reused across batches, one free list per (shape, strides, dtype).

    ``tensor.pin_memory()`` allocates (and page-locks) a new buffer for every batch; page-locking
    is a system call per buffer and the CUDA caching host allocator holds on to what it returned.
    Here a batch is copied into a buffer from the pool and the buffer comes back once the
    host-to-device copy that reads it has finished.
    """

    def __init__(self, pin: bool = True) -> None:
        self.pin = pin
        self._free: dict[tuple[Any, ...], list[torch.Tensor]] = {}
        self._lock = threading.Lock()
        self.allocated = 0

    def stage(self, tensor: torch.Tensor) -> torch.Tensor:
        """A buffer holding a copy of ``tensor`` (same shape, strides and dtype)."""
        key = (tuple(tensor.shape), tensor.stride(), tensor.dtype)
        with self._lock:
            free = self._free.get(key)
            buffer = free.pop() if free else None
        if buffer is None:
            buffer = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, pin_memory=self.pin)
            self.allocated += 1
        return buffer.copy_(tensor)

    def give_back(self, buffers: list[torch.Tensor]) -> None:
        with self._lock:
            for buffer in buffers:
                self._free.setdefault((tuple(buffer.shape), buffer.stride(), buffer.dtype), []).append(buffer)


class DeviceCopy:
    """Copy batches (nested tuples, lists, dicts of tensors) to a CUDA device on a side stream,
    then apply ``after`` to each there (same stream, so it runs on the GPU after the copy)."""

    def __init__(
        self, device: torch.device, pool: StagingPool | None = None, after: Callable[[Any], Any] | None = None
    ) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.pool = pool or StagingPool()
        self.after = after

    def __call__(self, data: Any) -> _InFlight:
        staged: list[torch.Tensor] = []
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            out = _map_tensors(data, lambda t: self._copy(t, staged))
            if self.after is not None and out is not None:
                out = self.after(out)
            event = torch.cuda.Event()
            event.record(self.stream)
        event.synchronize()  # in the loader thread: the staging buffers have been read
        self.pool.give_back(staged)
        return _InFlight(out, event, self.device)

    def _copy(self, tensor: torch.Tensor, staged: list[torch.Tensor]) -> torch.Tensor:
        if tensor.device.type != "cpu":
            return tensor
        buffer = self.pool.stage(tensor)
        staged.append(buffer)
        return buffer.to(self.device, non_blocking=True)


class _InFlight:
    """A device batch and the event after which it is complete."""

    def __init__(self, data: Any, event: Any, device: torch.device) -> None:
        self.data, self.event, self.device = data, event, device

    def wait(self) -> Any:
        stream = torch.cuda.current_stream(self.device)
        stream.wait_event(self.event)  # on the GPU: the consumer's kernels run after the copy

        def keep(tensor: torch.Tensor) -> torch.Tensor:
            tensor.record_stream(stream)  # memory made on the side stream, used on the consumer's
            return tensor

        return _map_tensors(self.data, keep)


def _map_tensors(data: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(data, torch.Tensor):
        return fn(data)
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # named tuple
        return type(data)(*(_map_tensors(d, fn) for d in data))
    if isinstance(data, (tuple, list)):
        return type(data)(_map_tensors(d, fn) for d in data)
    if isinstance(data, dict):
        return {k: _map_tensors(v, fn) for k, v in data.items()}
    return data
