"""Output buffers for whole batches, reused instead of allocated and zeroed by the kernel each time.

A batch of 64 normalized 224 px images is 38 MB. Allocated afresh, its pages are mapped and
zeroed by the kernel on first touch (thousands of page faults per batch) and given back when the
model drops it; on 2 cores that cost as much as normalizing. :func:`batch_buffer` gives:

- in a DataLoader worker process started by chute's loader, a slot of the worker set's
  :class:`BatchArena`: shared memory the main process mapped before it forked the workers, so a
  batch travels as a few numbers (which slot, shape, strides) and is neither copied, nor mapped
  again, nor faulted in anew on either side; the slot is written again only after the main
  process has dropped every tensor made from it;
- in any other worker process (spawned, or no slot left), a tensor in torch's shared memory,
  which the trip to the main process then moves without copying (what ``default_collate`` does);
- elsewhere (loader threads, the main process), a buffer from a small per-thread pool: one whose
  last batch nobody holds any more (every view of a tensor made from a NumPy array keeps that
  array alive, so its reference count says so), else a new one, kept while the pool has room.

On the 2-core machine a worker normalizing 64 photos into a fresh shared-memory tensor took 16 ms
for the 2.7 ms of the table lookup itself; ``docs/benchmarks.md`` ("Batches between processes")
has the end-to-end figures; ``CHUTE_BATCH_ARENA=off`` turns the arena off, to measure it.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import mmap
import multiprocessing
import os
import sys
import threading
import weakref
from collections.abc import Iterator
from multiprocessing.reduction import ForkingPickler
from typing import Any

import numpy as np
import torch

_POOL = threading.local()
_KEEP = 4  # buffers kept per (shape, dtype) and thread: the prefetch depth plus the batch in use


def batch_buffer(shape: tuple[int, ...], dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """An uninitialised C-contiguous tensor of ``shape`` for a batch being made (see the module)."""
    nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
    if torch.utils.data.get_worker_info() is not None:
        slot = _WORKER_SLOTS.take(nbytes) if _WORKER_SLOTS is not None else None
        if slot is not None:
            return slot.view(dtype).view(shape)
        storage = torch.UntypedStorage._new_shared(nbytes)
        return torch.empty(0, dtype=dtype).set_(storage).view(shape)
    pools: dict[tuple[tuple[int, ...], torch.dtype], list[np.ndarray]] = _POOL.__dict__.setdefault("pools", {})
    pool = pools.setdefault((tuple(shape), dtype), [])
    for array in pool:
        # References: the pool's list, this loop's name and getrefcount's argument. Any more means a
        # tensor (or a view of one) made from it is still alive somewhere.
        if sys.getrefcount(array) == 3:
            return torch.from_numpy(array)[:nbytes].view(dtype).view(shape)
    array = np.empty(max(nbytes, 1), dtype=np.uint8)  # bytes: any dtype, NumPy's or not (bfloat16)
    if len(pool) < _KEEP:
        pool.append(array)
    return torch.from_numpy(array)[:nbytes].view(dtype).view(shape)


# -- Worker processes: one shared arena per worker set -------------------------------------------

ENV = "CHUTE_BATCH_ARENA"  # "off": worker batches in torch's shared memory, as before (to measure)
_PAGE = mmap.PAGESIZE
_MAP_NORESERVE = 0x4000  # Linux: address space only; pages are given when first written
_FREE, _BUSY, _SENT = 0, 1, 2  # a slot: free; the worker's; sent, the main process's
_OFFSET, _CAPACITY, _STATE, _SENDS = range(4)  # columns of the slot table


class BatchArena:
    """Shared memory for the batches of one set of forked worker processes.

    Made by the main process just before it forks the workers (``fork`` start method only: the
    children inherit the mapping; a spawned worker gets none and uses torch's shared memory). Each
    worker owns ``per_worker`` bytes of address space (reserved, not allocated: pages exist once
    written) cut into at most ``slots`` buffers, sized by the batches it makes and reused, and a
    row of the slot table ``(offset, capacity, state, sends)``. A worker marks a slot busy when it
    takes it; the main process marks it free when the last tensor made from it is gone.

    Args:
        workers: Worker processes of the set.
        per_worker: Address space per worker, bytes.
        slots: Buffers per worker at most; a worker with none free falls back to torch's shared memory.
    """

    _tokens = itertools.count()

    def __init__(self, workers: int, per_worker: int = 1 << 31, slots: int = 12) -> None:
        self.workers, self.slots = int(workers), int(slots)
        self.per_worker = int(per_worker) // _PAGE * _PAGE
        table_bytes = -(-self.workers * self.slots * 4 * 8 // _PAGE) * _PAGE
        self.base = table_bytes
        self.size = table_bytes + self.workers * self.per_worker
        self.map = mmap.mmap(-1, self.size, flags=mmap.MAP_SHARED | _MAP_NORESERVE)
        self.table = np.frombuffer(self.map, dtype=np.int64, count=self.workers * self.slots * 4).reshape(
            self.workers, self.slots, 4
        )
        self.token = next(self._tokens)
        self._received: weakref.WeakValueDictionary[tuple[int, int, int], np.ndarray] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    @classmethod
    def for_workers(cls, workers: int, context: Any) -> BatchArena | None:
        """An arena for ``workers`` forked workers, or ``None`` where it cannot serve (not forked,
        or the address space refused)."""
        chosen = context if context is not None else multiprocessing.get_context()
        method = chosen if isinstance(chosen, str) else chosen.get_start_method()
        off = os.environ.get(ENV, "on").strip().lower() in ("off", "0", "false", "no")
        if workers <= 0 or method != "fork" or sys.platform != "linux" or off or _address_space_limited():
            return None
        try:
            return cls(workers)
        except (OSError, ValueError):  # e.g. strict overcommit refusing the reservation
            return None

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("a BatchArena is inherited by forked workers, not pickled")

    @contextlib.contextmanager
    def forking(self) -> Iterator[None]:
        """Around the fork of this arena's workers, in the main process: from here on this process
        rebuilds the workers' batches (a pin-memory thread may receive one before the fork returns);
        after it, no later fork inherits the arena (another loader's workers would keep its pages)."""
        _ARENAS[self.token] = self
        try:
            yield
        except BaseException:
            self.retire()
            raise
        if hasattr(mmap, "MADV_DONTFORK"):
            self.map.madvise(mmap.MADV_DONTFORK)

    def retire(self) -> None:
        """The workers are gone: forget the arena (tensors made from it keep its memory mapped)."""
        _ARENAS.pop(self.token, None)

    # -- In a worker --------------------------------------------------------------------------------

    def install(self, worker: int) -> None:
        """Make this arena's row ``worker`` the buffers of :func:`batch_buffer` in this process, whose
        tensors :func:`_reduce_tensor` sends as slot numbers (called in the worker, by ``WorkerInit``)."""
        global _WORKER_SLOTS
        _WORKER_SLOTS = _WorkerSlots(self, worker)

    # -- In the main process ------------------------------------------------------------------------

    def rebuild(
        self, worker: int, slot: int, sends: int, dtype: torch.dtype, size: Any, stride: Any, offset: int
    ) -> torch.Tensor:
        """The tensor a worker sent from ``slot``; the slot is freed when every tensor made from this
        sending is gone."""
        row = self.table[worker, slot]
        key = (worker, slot, sends)
        with self._lock:
            holder = self._received.get(key)
            if holder is None:
                start = self.base + worker * self.per_worker + int(row[_OFFSET])
                holder = np.frombuffer(self.map, dtype=np.uint8, count=int(row[_CAPACITY]), offset=start)
                self._received[key] = holder
                weakref.finalize(holder, _free, self.table, worker, slot, sends, os.getpid())
        return torch.from_numpy(holder).view(dtype).as_strided(size, stride, offset)


def _address_space_limited() -> bool:
    """Whether this process runs under an address-space limit (``ulimit -v``): the arena reserves
    gigabytes of address space (no memory), which such a limit counts; torch's shared memory then."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return soft != resource.RLIM_INFINITY


def _free(table: np.ndarray, worker: int, slot: int, sends: int, owner: int) -> None:
    """In the main process (``owner``): the last tensor made from a sent slot is gone.

    Only there: a process forked later (another loader's workers) inherits the batch, and with it
    this call when its garbage collector frees it, but not the arena's memory (``MADV_DONTFORK``,
    :meth:`BatchArena.forking`): reading the table there is a segmentation fault.
    """
    if os.getpid() != owner:
        return
    if table[worker, slot, _SENDS] == sends:  # not taken again since (it cannot be while held)
        table[worker, slot, _STATE] = _FREE


def _unsent(table: np.ndarray, worker: int, slot: int, sends: int, owner: int) -> None:
    """In the worker (``owner``): the last tensor made from a slot is gone; free it unless it was
    sent. Not in a process the worker forked: its copy of the batch is not the worker's (see :func:`_free`)."""
    if os.getpid() != owner:
        return
    if table[worker, slot, _SENDS] == sends and table[worker, slot, _STATE] == _BUSY:
        table[worker, slot, _STATE] = _FREE


class _WorkerSlots:
    """One worker's row of a :class:`BatchArena`."""

    def __init__(self, arena: BatchArena, worker: int) -> None:
        self.arena, self.worker = arena, worker
        self.row = arena.table[worker]
        self.start = arena.base + worker * arena.per_worker
        self.low = np.frombuffer(arena.map, dtype=np.uint8, count=1, offset=self.start).ctypes.data

    def take(self, nbytes: int) -> torch.Tensor | None:
        """A free slot of at least ``nbytes`` (the smallest), or a new one; ``None`` when out of room."""
        if nbytes <= 0:
            return None
        row, best = self.row, -1
        for k in range(self.arena.slots):
            capacity = int(row[k, _CAPACITY])
            if capacity == 0:  # slots are made in order: none after this one
                break
            if row[k, _STATE] == _FREE and capacity >= nbytes and (best < 0 or capacity < row[best, _CAPACITY]):
                best = k
        if best < 0:
            made = int(np.count_nonzero(row[:, _CAPACITY]))
            end = int((row[:made, _OFFSET] + row[:made, _CAPACITY]).max()) if made else 0
            capacity = -(-nbytes // _PAGE) * _PAGE
            if made == self.arena.slots or end + capacity > self.arena.per_worker:
                return None
            best = made
            row[best, _OFFSET], row[best, _CAPACITY] = end, capacity
        row[best, _STATE] = _BUSY
        row[best, _SENDS] += 1
        offset = int(row[best, _OFFSET])
        # The worker's own hold on the slot: a batch made in it but not sent (an intermediate stage,
        # e.g. the uint8 crops a CPU trainer's batch is normalized from) frees it when dropped here.
        holder = np.frombuffer(self.arena.map, dtype=np.uint8, count=nbytes, offset=self.start + offset)
        weakref.finalize(holder, _unsent, self.arena.table, self.worker, best, int(row[best, _SENDS]), os.getpid())
        return torch.from_numpy(holder)

    def slot_of(self, tensor: torch.Tensor) -> tuple[int, int] | None:
        """``(slot, byte offset of the tensor's first element in it)`` when the whole tensor lies in
        one of this row's slots."""
        at = tensor.data_ptr() - self.low
        if not 0 <= at < self.arena.per_worker or tensor.numel() == 0:
            return None
        extent = tensor.element_size() * (
            1 + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride(), strict=True))
        )
        for k in range(self.arena.slots):
            start, capacity = int(self.row[k, _OFFSET]), int(self.row[k, _CAPACITY])
            if capacity and start <= at and at + extent <= start + capacity:
                return k, at - start
        return None


_WORKER_SLOTS: _WorkerSlots | None = None
_ARENAS: dict[int, BatchArena] = {}


#: Bytes up to which a tensor a worker sends outside the arena travels inside the message itself.
#: torch sends every tensor through a new shared-memory file, whose descriptor the receiver fetches
#: from the worker over a socket: ~0.8 ms a tensor up to 256 KB on the 2-core machine, 1.2 ms at
#: 1 MB. Inside the message: 0.09 ms at 4 KB, 0.15-0.27 ms at 64 KB, 0.33 ms at 128 KB, 0.58 ms at
#: 256 KB, 1.8 ms at 1 MB (``python scripts/bench_small_batches.py --sizes``). A table's batch of
#: 64 rows from one worker: 1.7 ms a batch, 0.35 ms inline (docs/benchmarks.md).
INLINE_BYTES = 1 << 17


def send_batches_lightly() -> None:
    """In a loader worker: send tensors with :func:`_reduce_tensor` (an arena slot's as its number, a
    small one of its own inside the message, any other as torch does). Called by ``WorkerInit`` in
    every worker of a chute loader, forked or spawned."""
    ForkingPickler.register(torch.Tensor, _reduce_tensor)


def _reduce_tensor(tensor: torch.Tensor) -> Any:
    """How a worker pickles a tensor for the main process: a slot's tensor as its slot and layout, a
    small one that alone holds its memory (:func:`_by_value`) as its bytes, any other as torch does
    (through shared memory). Tensor subclasses, tensors that need autograd and any but plain strided
    CPU tensors go torch's way, as they are.

    This runs in the queue's feeder thread, where an error loses the batch and leaves the main
    process waiting for it: where chute's ways fail, torch's is taken."""
    from torch.multiprocessing.reductions import reduce_tensor

    if (
        type(tensor) is not torch.Tensor
        or tensor.requires_grad
        or tensor.layout != torch.strided
        or tensor.device.type != "cpu"
    ):
        return reduce_tensor(tensor)
    try:
        sent = _by_slot(tensor) or _by_value(tensor)
    except (RuntimeError, TypeError, ValueError):
        sent = None
    return sent if sent is not None else reduce_tensor(tensor)


def _by_slot(tensor: torch.Tensor) -> tuple[Any, tuple[Any, ...]] | None:
    """A tensor in one of this worker's arena slots, as the slot's number and its layout there."""
    slots = _WORKER_SLOTS
    found = slots.slot_of(tensor) if slots is not None else None
    if slots is None or found is None or found[1] % tensor.element_size():
        return None
    slot, at = found
    sends = int(slots.row[slot, _SENDS])
    slots.row[slot, _STATE] = _SENT  # from now on the main process frees it
    offset = at // tensor.element_size()  # of the first element, in elements from the slot's start
    layout = (tensor.dtype, tuple(tensor.size()), tensor.stride(), offset)
    return _rebuild, (slots.arena.token, slots.worker, slot, sends, *layout)


#: How many references a tensor's memory (its storage) has: torch's own count, which its graph
#: tools read (None where a torch lacks it: then nothing is sent by value).
_USE_COUNT = getattr(torch._C, "_storage_Use_Count", None)


def _by_value(tensor: torch.Tensor) -> tuple[Any, tuple[Any, ...]] | None:
    """A small tensor (its memory up to :data:`INLINE_BYTES`) as the bytes of its memory and its exact
    layout (strides and offset), received as a writable copy, when nothing else can see that memory:
    it is not a view (whose base holds the memory too), no other tensor in the worker holds it
    (another field of the batch that is a view of it: the two must still share memory when they
    arrive, as torch's way keeps them), and it is not in shared memory already (a dataset that
    shares it with another process on purpose). Anything else goes torch's way."""
    if _USE_COUNT is None or tensor._base is not None or tensor.is_quantized or tensor.is_shared():
        return None
    if tensor.is_conj() or tensor.is_neg():  # lazy flags its bytes do not carry
        return None
    storage = tensor.untyped_storage()
    if storage.nbytes() > INLINE_BYTES or _USE_COUNT(storage._cdata) != 2:  # this tensor and `storage`
        return None
    memory = torch.empty(0, dtype=torch.uint8).set_(storage).numpy().tobytes()
    return _rebuild_inline, (tensor.dtype, tuple(tensor.size()), tensor.stride(), tensor.storage_offset(), memory)


def _rebuild_inline(
    dtype: torch.dtype, size: tuple[int, ...], stride: tuple[int, ...], offset: int, memory: bytes
) -> torch.Tensor:
    """A tensor sent by :func:`_by_value`: the same layout over a writable copy of its memory."""
    raw = torch.frombuffer(bytearray(memory), dtype=torch.uint8) if memory else torch.empty(0, dtype=torch.uint8)
    return torch.empty(0, dtype=dtype).set_(raw.untyped_storage(), offset, size, stride)


def _rebuild(
    token: int, worker: int, slot: int, sends: int, dtype: torch.dtype, size: Any, stride: Any, offset: int
) -> torch.Tensor:
    arena = _ARENAS.get(token)
    if arena is None:
        raise RuntimeError(
            "a batch arrived from a loader worker whose shared batch memory is gone (the loader that "
            "forked it was shut down); this is a bug in chute, please report it"
        )
    return arena.rebuild(worker, slot, sends, dtype, size, stride, offset)
