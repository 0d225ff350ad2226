"""``CachedDataset``: compute a dataset's deterministic stage once, apply the random stage every epoch.

The source dataset yields the deterministic part of each sample (e.g. decode + resize): a tuple or
dict of fixed-shape tensors, arrays and numbers. Those are stored once, one array per field:

- ``store="memory"``: tensors in shared memory, built in the main process before workers start,
  so every worker reads the same pages (no per-worker copy);
- ``store="disk"``: raw arrays in ``cache_dir``, memory-mapped read-only, with a manifest that
  records the fingerprint, shapes, dtypes and byte sizes. The manifest is written last, so a cache
  is complete only with it; a fingerprint mismatch (changed source files or deterministic config)
  or a file of the wrong size (truncated) makes the cache rebuild, never silently read.

The random stage (``transform``) runs on the fly in ``__getitem__``, so augmentations still differ
per epoch and worker. Nothing is pickled: the manifest is JSON and the arrays are raw bytes.

Colour images (``uint8`` fields shaped ``(3 or 4, H, W)``) are stored channels-last, ``(H, W, C)``,
and read back as ``(C, H, W)`` views of those bytes: a batch gathered from the cache is then already
in the layout that crops (OpenCV) and convolutions want, where converting a 64 x 256 px batch
from ``(N, C, H, W)`` costs about as much as cropping it.

A source may return ``None`` for a sample it leaves out (an evaluation split's unreadable image
under ``on_error="skip"``): the cache records it as missing (in the manifest too), ``__getitem__``
returns ``None`` for it and ``__getitems__`` gathers batches without it.

How the arrays are stored, built and published is :mod:`chute.datasets.cache_store`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from chute.bad_samples import LeftOut
from chute.datasets.cache_store import (
    as_read,
    build_disk,
    build_lock,
    build_memory,
    gather,
    is_shared,
    load_disk,
    rebuild,
    scalar,
)
from chute.errors import ConfigError, DataError
from chute.loader import SharedEpoch, sample_seed, seeded_call

Store = Literal["memory", "disk"]


class CachedDataset(Dataset[Any]):
    """Cache ``source``'s samples once (memory or disk) and apply ``transform`` to each on the fly.

    Args:
        source: Map-style dataset whose samples are the deterministic stage (fixed shapes).
        transform: Random stage, applied to every sample read from the cache (``None``: none).
        store: ``memory`` (shared by all workers) or ``disk`` (memory-mapped, reused across runs).
        cache_dir: Folder for ``store="disk"``.
        key: Fingerprint of what the source depends on (see :func:`fingerprint`); the disk cache is
            rebuilt when it changes.
        progress: Show a progress bar while building.
        seed: Key the random stage of sample ``i`` by ``(seed, epoch, i)`` (see
            :func:`~chute.loader.sample_seed`; ``set_epoch`` moves on), so it does not depend on
            which worker reads it. ``None``: the transform's own generators.

    Example:
        >>> source = [(torch.full((2, 2), i, dtype=torch.uint8), i) for i in range(5)]
        >>> cached = CachedDataset(source, transform=lambda s: (s[0] + 1, s[1]))
        >>> cached[3][0].tolist(), cached[3][1]
        ([[4, 4], [4, 4]], 3)
    """

    def __init__(
        self,
        source: Sequence[Any] | Dataset[Any],
        transform: Callable[[Any], Any] | None = None,
        *,
        store: Store = "memory",
        cache_dir: str | os.PathLike[str] | None = None,
        key: str = "",
        progress: bool = True,
        seed: int | None = None,
    ) -> None:
        if store not in ("memory", "disk"):
            raise ConfigError("cache", store, "must be 'memory' or 'disk'")
        if store == "disk" and cache_dir is None:
            raise ConfigError("cache_dir", None, "is needed for a disk cache")
        self.transform = transform
        self.seed = seed
        self.epoch = SharedEpoch()
        self.store = store
        self.cache_dir = None if cache_dir is None else os.fspath(cache_dir)
        self.key = key
        n = len(source)  # type: ignore[arg-type]
        if n == 0:
            raise DataError("Cannot cache an empty dataset.")
        if store == "disk":
            assert self.cache_dir is not None
            arrays = load_disk(self.cache_dir, key, n)
            # Builders on nodes that share the folder but not a lock may swap in their (identical)
            # copies while this one reads: read again what is published, build only if nothing is.
            for _ in range(3):
                if arrays is not None:
                    break
                with build_lock(self.cache_dir):  # one builder per lock; the others read what it built
                    arrays = load_disk(self.cache_dir, key, n)
                    if arrays is None:
                        build_disk(source, n, self.cache_dir, key, progress)
                        arrays = load_disk(self.cache_dir, key, n)
            if arrays is None:
                raise DataError(
                    f"Cache '{self.cache_dir}' was built but does not read back complete: another process "
                    "is rewriting it (two runs with different settings sharing one cache_dir?). Give each "
                    "its own data.cache_dir."
                )
            self.names, self.arrays, self.template, missing, self.layouts = arrays
        else:
            self.names, self.arrays, self.template, missing, self.layouts = build_memory(source, n, progress)
        #: Indices the source left out (returned ``None`` for); never delivered.
        self.missing = np.asarray(sorted(missing), dtype=np.int64)
        self._present: np.ndarray | None = None
        #: The same, where an evaluation loader asks which samples a short batch kept.
        self.left_out: LeftOut | None = None
        if len(self.missing):
            self._present = np.ones(n, dtype=bool)
            self._present[self.missing] = False
            self.left_out = LeftOut(n)
            self.left_out.always(self.missing.tolist())

    def __len__(self) -> int:
        return len(self.arrays[0])

    def __getitem__(self, index: int) -> Any:
        if self._present is not None and not self._present[index]:
            return None  # left out by the source
        # Copy out of the cache: transforms may write in place, and a memmap slice must not escape.
        values = [
            as_read(torch.from_numpy(np.array(a[index])), last) if a.ndim > 1 else scalar(a[index])
            for a, last in zip(self.arrays, self.layouts, strict=True)
        ]
        sample = rebuild(self.template, values)
        if self.transform is None:
            return sample
        if self.seed is None:
            return self.transform(sample)
        return seeded_call(self.transform, sample, sample_seed(self.seed, self.epoch.get(), int(index)))

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose random stage the next samples get (seen by persistent workers too)."""
        self.epoch.set(epoch)

    def __getitems__(self, indices: Sequence[int]) -> Any:
        """A whole batch: without a random stage, one gather per field, already collated (a tuple or
        dict of batched tensors) and in ascending index order (sequential reads are what memory maps
        and page caches do best; which samples form the batch is the sampler's choice); with a random
        stage, the list of transformed samples in the given order."""
        if self.transform is not None:
            return [self[int(i)] for i in indices]
        index = np.sort(np.asarray(indices, dtype=np.int64))
        if self._present is not None:
            index = index[self._present[index]]
        # NumPy's gather runs on one core and releases the GIL, so loader threads gather batches in
        # parallel; torch's index_select would start intra-op threads of its own in each of them.
        return rebuild(
            self.template,
            [as_read(gather(a, index), last) for a, last in zip(self.arrays, self.layouts, strict=True)],
        )

    def reseed(self, seed: int) -> None:
        """Reseed the random stage in a worker (chute's worker seeding calls this)."""
        reseed = getattr(self.transform, "reseed", None)
        if callable(reseed):
            reseed(seed)

    @property
    def shared(self) -> bool:
        """Whether workers read the same pages: shared-memory tensors or read-only memory maps."""
        return all(isinstance(a, np.memmap) or is_shared(a) for a in self.arrays)

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays))
