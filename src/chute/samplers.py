"""Batch samplers, seeded by (seed, epoch): whole index tensors, and length buckets.

Used as a DataLoader's ``batch_sampler``, :class:`BatchIndexSampler` yields one ``int64`` tensor per
batch; a dataset with ``__getitems__`` (e.g. :class:`~chute.datasets.TabularDataset`) then gathers
the batch with one indexing operation. Nothing in the hot path loops over single rows in Python.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from chute.loader import derive_seed


class EpochSeeded:
    """The epoch logic shared by chute's batch samplers.

    Lightning calls ``set_epoch`` on ``dataloader.sampler`` and ``dataloader.batch_sampler.sampler``
    but not on a batch sampler itself, so ``self.sampler`` is a small hook that forwards it here.
    A plain loop that never calls ``set_epoch`` still gets a new order each pass: the epoch then
    advances every time iteration starts (also when a pass is cut short).
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.epoch = 0
        self._explicit = False
        self.sampler = _EpochHook(self)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._explicit = True

    def _start_pass(self) -> int:
        """The seed of the pass that starts now (advancing the epoch when ``set_epoch`` is not used)."""
        seed = derive_seed(self.seed, self.epoch)
        if not self._explicit:
            self.epoch += 1
        return seed


class _EpochHook:
    """Found by Lightning at ``batch_sampler.sampler``; forwards ``set_epoch`` to the batch sampler."""

    def __init__(self, owner: EpochSeeded) -> None:
        self.owner = owner

    def set_epoch(self, epoch: int) -> None:
        self.owner.set_epoch(epoch)


class BatchIndexSampler(EpochSeeded, Sampler[torch.Tensor]):
    """Batches of indices as tensors: a seeded permutation (or ``0..n-1``) cut into slices.

    Args:
        num_samples: Dataset length.
        batch_size: Indices per batch.
        shuffle: Permute each epoch (seeded by ``seed`` and the epoch).
        drop_last: Drop the last, incomplete batch.
        seed: Seed of the permutation.

    Example:
        >>> [b.tolist() for b in BatchIndexSampler(5, 2, shuffle=False)]
        [[0, 1], [2, 3], [4]]
    """

    def __init__(
        self, num_samples: int, batch_size: int, *, shuffle: bool = True, drop_last: bool = False, seed: int = 0
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")
        EpochSeeded.__init__(self, seed)
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[torch.Tensor]:
        seed = self._start_pass()
        if self.shuffle:
            order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(seed))
        else:
            order = torch.arange(self.num_samples)
        stop = len(self) * self.batch_size if self.drop_last else self.num_samples
        yield from order[:stop].split(self.batch_size)


class BucketBatchSampler(EpochSeeded, Sampler[list[int]]):
    """Batches of similar length, to cut padding: shuffle, sort within pools, shuffle the batches.

    Each epoch the indices are permuted (seeded by ``seed`` and the epoch), cut into pools of
    ``batch_size * pool_batches`` indices, each pool sorted by length and cut into batches, and the
    batches shuffled; a new order each epoch (see :class:`EpochSeeded`).

    Args:
        lengths: Length of every sequence.
        batch_size: Sequences per batch.
        shuffle: Shuffle (otherwise: batches in sorted order, for evaluation).
        drop_last: Drop the last, incomplete batch.
        pool_batches: Batches per sorting pool; larger pools pad less but shuffle less.
        seed: Seed of the permutation.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        pool_batches: int = 50,
        seed: int = 0,
    ) -> None:
        if batch_size < 1 or pool_batches < 1:
            raise ValueError(f"batch_size={batch_size} and pool_batches={pool_batches} must be >= 1")
        EpochSeeded.__init__(self, seed)
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.pool_batches = pool_batches

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batches(self, seed: int | None = None) -> list[np.ndarray]:
        """One epoch's batches; ``seed`` defaults to the current epoch's (without advancing it)."""
        n = len(self.lengths)
        rng = np.random.default_rng(derive_seed(self.seed, self.epoch) if seed is None else seed)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        pool = n if not self.shuffle else self.batch_size * self.pool_batches
        batches: list[np.ndarray] = []
        for start in range(0, n, pool):
            chunk = order[start : start + pool]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        # Pools leave ragged tails: regroup them so only the final batch can be short.
        full = [b for b in batches if len(b) == self.batch_size]
        rest = np.concatenate([b for b in batches if len(b) < self.batch_size] or [np.zeros(0, np.int64)])
        rest = rest[np.argsort(self.lengths[rest], kind="stable")]
        full += [rest[i : i + self.batch_size] for i in range(0, len(rest), self.batch_size)]
        if self.shuffle:
            full = [full[i] for i in rng.permutation(len(full))]
        if self.drop_last:
            full = [b for b in full if len(b) == self.batch_size]
        return full

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches(self._start_pass()):
            yield batch.tolist()
