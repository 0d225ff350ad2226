"""Output buffers for whole batches, reused instead of allocated and zeroed by the kernel each time.

A batch of 64 normalized 224 px images is 38 MB. Allocated afresh, its pages are mapped and
zeroed by the kernel on first touch (thousands of page faults per batch) and given back when the
model drops it; on 2 cores that cost as much as normalizing. :func:`batch_buffer` gives:

- in a DataLoader worker process, a tensor in shared memory, which the trip to the main process
  then moves without copying (what ``default_collate`` does for its own outputs);
- elsewhere (loader threads, the main process), a buffer from a small per-thread pool: one whose
  last batch nobody holds any more (every view of a tensor made from a NumPy array keeps that
  array alive, so its reference count says so), else a new one, kept while the pool has room.
"""

from __future__ import annotations

import sys
import threading

import numpy as np
import torch

_POOL = threading.local()
_KEEP = 4  # buffers kept per (shape, dtype) and thread: the prefetch depth plus the batch in use


def batch_buffer(shape: tuple[int, ...], dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """An uninitialised C-contiguous tensor of ``shape`` for a batch being made (see the module)."""
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    if torch.utils.data.get_worker_info() is not None:
        storage = torch.UntypedStorage._new_shared(int(np.prod(shape)) * np_dtype.itemsize)
        return torch.empty(0, dtype=dtype).set_(storage).view(shape)
    pools: dict[tuple[tuple[int, ...], np.dtype], list[np.ndarray]] = _POOL.__dict__.setdefault("pools", {})
    pool = pools.setdefault((tuple(shape), np_dtype), [])
    for array in pool:
        # References: the pool's list, this loop's name and getrefcount's argument. Any more means a
        # tensor (or a view of one) made from it is still alive somewhere.
        if sys.getrefcount(array) == 3:
            return torch.from_numpy(array)
    array = np.empty(shape, dtype=np_dtype)
    if len(pool) < _KEEP:
        pool.append(array)
    return torch.from_numpy(array)
