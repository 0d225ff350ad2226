"""Orders: what drives every chute loader (the :class:`Order` protocol), and the samplers that
implement it for map-style data, distributed-aware on their own: one draw per (seed, epoch), split
across ranks.

The other orders implement the same protocol: the class-imbalance draws
(:mod:`chute.loader.draws`), a SQL table's key orders (:mod:`chute.loader.key_orders`) and the shard
stream (:class:`~chute.datasets.shards.ShardStream`, whose splitting and shuffle buffer are in
:mod:`chute.loader.streams`).

Every chute sampler draws the whole epoch (indices or whole batches) from a generator seeded by
``(seed, epoch)``, so every rank draws the same thing; rank ``r`` of ``w`` then takes items
``r, r + w, r + 2w, ...``. Ranks never overlap within an epoch and together they see exactly the
draw. For training the draw is made a multiple of the world size (a few items repeated, so every
rank takes as many steps); for evaluation (``pad=False``) it is not: ranks differ by at most one
item and every sample is evaluated exactly once. ``set_epoch`` changes the draw; ``resume`` starts a
rank's pass mid-epoch. The position itself is the loader's (:class:`~chute.loader.build.Passes`),
not the sampler's: the loader counts the batches it hands out, after worker prefetch.

They subclass :class:`torch.utils.data.DistributedSampler`, so Lightning recognises them as
already distributed and does not wrap them again (its ``DistributedSamplerWrapper`` would let each
rank draw its own weighted list). Samplers that yield whole batches are used as the DataLoader's
``sampler`` with ``batch_size=None`` and a :class:`BatchFetch` view of the dataset, so the
DataLoader fetches a batch per sampler item.

"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from chute.loader.distributed import rank_share, world_position
from chute.loader.seeding import derive_seed

__all__ = [
    "BatchIndexSampler",
    "BucketBatchSampler",
    "DistributedDraw",
    "EvalBatches",
    "IndexSampler",
    "Order",
    "SnapshotOrder",
]


@runtime_checkable
class Order(Protocol):
    """The batches of one pass on this rank, in order: what a chute loader reads.

    :func:`~chute.loader.build.build_loader` takes one as ``batches`` (a sampler of index batches:
    :class:`~chute.loader.build.Batched` over a :class:`DistributedDraw`, or a draw of whole
    batches) or as the dataset itself (a stream that yields whole batches). The loader
    (:class:`~chute.loader.build.Passes`) tells it the epoch before each pass's first batch and,
    after a restore, where that pass resumes; it counts the batches handed out itself, so the order
    keeps no position of its own beyond what :meth:`resume` gave it.
    """

    def set_epoch(self, epoch: int, /) -> None:
        """Make the next pass epoch ``epoch`` (a :meth:`resume` offset of another epoch is dropped)."""

    def resume(self, epoch: int, batches: int, /) -> None:
        """Make the next pass epoch ``epoch``, without the first ``batches`` batches of this rank's share."""

    def __len__(self) -> int:
        """Batches in one pass on this rank."""

    def __iter__(self) -> Iterator[Any]:
        """One pass: this rank's batches of the epoch."""


@runtime_checkable
class SnapshotOrder(Order, Protocol):
    """An order over data that changes between epochs (a database table: each epoch reads the rows
    committed when it began). The loader's position records which rows the epoch read, so a resumed
    pass reads those rows again."""

    def snapshot_state(self) -> Mapping[str, Any] | None:
        """What the current epoch read (``None`` before it read anything)."""

    def restore_snapshot(self, epoch: int, state: Mapping[str, Any], /) -> None:
        """Read ``state``'s rows again when ``epoch`` starts."""


class DistributedDraw(DistributedSampler):
    """Base: subclasses implement :meth:`draw` (the epoch's items, identical on every rank).

    Args:
        seed: Seed; the epoch is mixed in.
        rank: This process's rank (``None``: from torch.distributed when the epoch starts).
        world_size: Number of ranks (likewise).
        pad: Pad each rank's share to as many items (training: equal step counts); ``False`` for
            evaluation, where nothing may count twice. Ranks split the draw by
            :func:`~chute.loader.distributed.rank_share`.
    """

    def __init__(self, seed: int = 0, rank: int | None = None, world_size: int | None = None, pad: bool = True) -> None:
        # DistributedSampler.__init__ needs a dataset and a process group; only its type is wanted.
        self.seed = seed
        self._rank, self._world = rank, world_size
        self.pad = pad
        self.epoch = 0  # told by the loader (Passes) before each pass: the order never moves it itself
        self._skip = 0

    @property
    def num_replicas(self) -> int:  # type: ignore[override]
        return world_position(self._rank, self._world)[1]

    @property
    def rank(self) -> int:  # type: ignore[override]
        return world_position(self._rank, self._world)[0]

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self._skip = 0  # a resume offset belongs to the epoch it was saved in
        self.epoch = int(epoch)

    def draw(self, generator: torch.Generator) -> np.ndarray:
        """The whole epoch for all ranks: indices ``(N,)`` or batches ``(N, B)``."""
        raise NotImplementedError

    def epoch_items(self, epoch: int | None = None) -> np.ndarray:
        """The draw of ``epoch`` (default: the current one), for all ranks."""
        seed = derive_seed(self.seed, self.epoch if epoch is None else epoch)
        return self.draw(torch.Generator().manual_seed(seed))

    def rank_items(self, epoch: int | None = None) -> np.ndarray:
        """This rank's share of the draw (:func:`~chute.loader.distributed.rank_share`)."""
        rank, world = world_position(self._rank, self._world)
        return rank_share(self.epoch_items(epoch), rank, world, self.pad)

    def __len__(self) -> int:
        return len(self.rank_items())

    def __iter__(self) -> Iterator[Any]:
        items = self.rank_items()
        start, self._skip = self._skip, 0
        for position in range(start, len(items)):
            item = items[position]
            yield item.tolist() if item.ndim else int(item)

    def batched(self, batch_size: int, drop_last: bool) -> Iterator[np.ndarray]:
        """One pass, as :meth:`__iter__`, cut into batches of ``batch_size`` items (index draws only):
        an ``int64`` array slice per batch, with no Python step per index (and none to turn a list of
        ints back into a tensor: a batched gather takes the array as it is)."""
        items = self.rank_items()
        start, self._skip = self._skip, 0
        stop = len(items) // batch_size * batch_size if drop_last else len(items)
        for begin in range(start, stop, batch_size):
            yield items[begin : begin + batch_size]

    def resume(self, epoch: int, items: int) -> None:
        """Make the next pass epoch ``epoch`` without its first ``items`` items (on this rank); a later
        ``set_epoch`` to another epoch drops the offset."""
        self.set_epoch(epoch)
        self._skip = int(items)


class IndexSampler(DistributedDraw):
    """Every index once per epoch: a permutation drawn from ``(seed, epoch)`` (or ``0..n-1``).

    The training sampler of DataModules without an imbalance strategy: the order depends on the
    seed and the epoch only (not on how many workers load or on other uses of the loader's
    generator), ranks split it as every :class:`DistributedDraw` does, and it resumes mid-epoch.

    Example:
        >>> sorted(IndexSampler(5, seed=1)) == [0, 1, 2, 3, 4]
        True
    """

    def __init__(
        self, num_samples: int, *, shuffle: bool = True, seed: int = 0, rank: int | None = None,
        world_size: int | None = None, pad: bool = True,
    ) -> None:  # fmt: skip
        super().__init__(seed, rank, world_size, pad)
        self.num_samples = num_samples
        self.shuffle = shuffle

    def draw(self, generator: torch.Generator) -> np.ndarray:
        if self.shuffle:
            return torch.randperm(self.num_samples, generator=generator).numpy()
        return np.arange(self.num_samples)


class EvalBatches(DistributedDraw):
    """Evaluation batches: every sample exactly once across ranks, rank shares within one sample.

    The samples are split first (rank ``r`` of ``w`` takes its contiguous share of ``order``, by the
    rule every order splits by: :func:`~chute.loader.distributed.rank_share`), then each rank cuts its
    share into batches, so no rank is left without a batch while there are at least ``w`` samples
    (splitting whole batches would leave a rank empty whenever there are fewer batches than ranks).

    Args:
        order: The evaluation order of all samples (an int ``n`` means ``0..n-1``; sequences pass
            their indices sorted by length, so batches pad little).
        batch_size: Samples per batch.
        rank, world_size: See :class:`DistributedDraw`.

    Example:
        >>> [list(EvalBatches(7, 2, rank=r, world_size=3)) for r in range(3)]
        [[[0, 1]], [[2, 3]], [[4, 5], [6]]]
    """

    def __init__(
        self, order: int | Sequence[int] | np.ndarray, batch_size: int, *, rank: int | None = None,
        world_size: int | None = None,
    ) -> None:  # fmt: skip
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")
        super().__init__(0, rank, world_size, pad=False)
        self.order = np.arange(order) if isinstance(order, int) else np.asarray(order, dtype=np.int64)
        self.batch_size = batch_size
        self.drop_last = False

    def draw(self, generator: torch.Generator) -> np.ndarray:
        return self.order

    def rank_items(self, epoch: int | None = None) -> np.ndarray:
        rank, world = world_position(self._rank, self._world)
        mine = rank_share(self.order, rank, world, pad=False)
        return _ragged([mine[i : i + self.batch_size] for i in range(0, len(mine), self.batch_size)])


class BatchIndexSampler(DistributedDraw):
    """Batches of indices: a seeded permutation (or ``0..n-1``) cut into slices.

    Args:
        num_samples: Dataset length.
        batch_size: Indices per batch.
        shuffle: Permute each epoch.
        drop_last: Drop the last, incomplete batch.
        seed, rank, world_size: See :class:`DistributedDraw`.

    Example:
        >>> list(BatchIndexSampler(5, 2, shuffle=False))
        [[0, 1], [2, 3], [4]]
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        pad: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")
        super().__init__(seed, rank, world_size, pad)
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last

    def draw(self, generator: torch.Generator) -> np.ndarray:
        n = self.num_samples
        order = torch.randperm(n, generator=generator).numpy() if self.shuffle else np.arange(n)
        stop = n // self.batch_size * self.batch_size if self.drop_last else n
        batches = [order[i : i + self.batch_size] for i in range(0, stop, self.batch_size)]
        return _ragged(batches)


def _ragged(batches: Sequence[np.ndarray]) -> np.ndarray:
    """An object array of index arrays (batches may differ in size)."""
    out = np.empty(len(batches), dtype=object)
    for i, batch in enumerate(batches):
        out[i] = np.asarray(batch, dtype=np.int64)
    return out


class BucketBatchSampler(DistributedDraw):
    """Batches of similar length, to cut padding: shuffle, sort within pools, shuffle the batches.

    Each epoch the indices are permuted, cut into pools of ``batch_size * pool_batches`` indices,
    each pool sorted by length and cut into batches, and the batches shuffled.

    Args:
        lengths: Length of every sequence.
        batch_size: Sequences per batch.
        shuffle: Shuffle (otherwise: batches in sorted order, for evaluation).
        drop_last: Drop the last, incomplete batch.
        pool_batches: Batches per sorting pool; larger pools pad less but shuffle less.
        seed, rank, world_size: See :class:`DistributedDraw`.
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
        rank: int | None = None,
        world_size: int | None = None,
        pad: bool = True,
    ) -> None:
        if batch_size < 1 or pool_batches < 1:
            raise ValueError(f"batch_size={batch_size} and pool_batches={pool_batches} must be >= 1")
        super().__init__(seed, rank, world_size, pad)
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.pool_batches = pool_batches

    def draw(self, generator: torch.Generator) -> np.ndarray:
        n, size = len(self.lengths), self.batch_size
        rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        pool = size * self.pool_batches if self.shuffle else n
        batches: list[np.ndarray] = []
        for start in range(0, n, pool):
            chunk = order[start : start + pool]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
        # Pools leave ragged tails: regroup them so only the final batch can be short.
        full = [b for b in batches if len(b) == size]
        rest = np.concatenate([b for b in batches if len(b) < size] or [np.zeros(0, np.int64)])
        rest = rest[np.argsort(self.lengths[rest], kind="stable")]
        full += [rest[i : i + size] for i in range(0, len(rest), size)]
        if self.shuffle:
            full = [full[i] for i in rng.permutation(len(full))]
        if self.drop_last:
            full = [b for b in full if len(b) == size]
        return _ragged(full)

    def batches(self, epoch: int | None = None) -> list[np.ndarray]:
        """One epoch's batches for all ranks (default: the current epoch)."""
        return list(self.epoch_items(epoch))

    def rank_items(self, epoch: int | None = None) -> np.ndarray:
        """This rank's batches: under DDP, its share of the epoch's samples in batch order (the one
        split rule, so fewer than ``world`` samples repeat), cut into batches again; one process
        takes the drawn batches as they are.

        Splitting whole batches instead would pad a short rank with whole batches: 23 samples in 6
        batches of 4 over 4 ranks repeated 8 samples (found by tests/test_multinode.py). A share's
        batches stay of similar length, as the samples are in bucket order; only the batch where
        a share begins may join two neighbouring buckets.
        """
        rank, world = world_position(self._rank, self._world)
        drawn = self.epoch_items(epoch)
        if world == 1 or not len(drawn):
            return drawn
        mine = rank_share(np.concatenate(list(drawn)), rank, world, self.pad)
        size = self.batch_size
        stop = len(mine) // size * size if self.drop_last else len(mine)
        return _ragged([mine[i : i + size] for i in range(0, stop, size)])
