"""The orders of a SQL table's keys (:class:`~chute.datamodules.SqlDataModule`): which rows an epoch
reads (its *snapshot*, :class:`Snapshots`), in what order, on which rank.

:class:`KeyOrder` hands out batches of an epoch's sorted keys, shuffled by blocks of consecutive
keys and split across ranks like every :class:`~chute.loader.orders.DistributedDraw`;
:class:`KeyStream` streams them range by range (:class:`KeyRanges`) through a seeded shuffle buffer
without holding the key index. Both record the snapshot they read in the loader's position, so a
resumed epoch reads the same rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from chute.errors import DataError
from chute.loader.build import Batched
from chute.loader.distributed import padded_share, rank_span
from chute.loader.orders import DistributedDraw
from chute.loader.seeding import derive_seed
from chute.loader.streams import buffered, partition

log = logging.getLogger("chute.datasets.sql")

__all__ = ["KeyOrder", "KeyRanges", "KeyStream", "SnapshotDraw", "Snapshots"]


@dataclass(frozen=True)
class KeyRanges:
    """An epoch's snapshot without its key index: runs of consecutive keys and the rows each holds.

    Range ``i`` covers keys ``lo[i]..hi[i]`` and holds ``count[i]`` rows of the split (the rows of
    other splits between them are not counted); ``last_key`` is the largest key of any split when
    the snapshot was read, so a range read later leaves newer rows out. ``sample``: the seeded
    sample of keys :meth:`SqlSource.key_ranges` was asked for.
    """

    lo: np.ndarray
    hi: np.ndarray
    count: np.ndarray
    last_key: int | None
    sample: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.count.sum())

    def __len__(self) -> int:
        return len(self.count)


class Snapshots:
    """The snapshot an order reads in each epoch: read at first use and, with ``refresh``, again when
    an epoch begins; a checkpoint's snapshot (its size and largest key) is read again for its epoch.

    Args:
        read: ``read(epoch, upto)`` returns the snapshot of the rows committed now (only keys
            ``<= upto`` when given): sorted keys (``np.ndarray``) or :class:`KeyRanges`.
        refresh: Read a new snapshot when another epoch begins (plain loops); otherwise the first
            stays (a loader made for one epoch, as under a Trainer).
        epoch_of: The epoch a snapshot read now belongs to (the Trainer's), if not the order's own: the
            same callable the loader (:class:`~chute.loader.build.Passes`) takes the epoch from. A
            snapshot can be read before the loader starts a pass (Lightning asks a new loader's
            length first, and a checkpoint's snapshot is restored before the epoch begins), so it
            asks the trainer directly rather than waiting for the loader's ``set_epoch``.
    """

    def __init__(
        self, read: Callable[[int, int | None], Any], refresh: bool = True, epoch_of: Callable[[], int] | None = None
    ) -> None:
        self.read, self.refresh, self.epoch_of = read, refresh, epoch_of
        self.current: Any = None
        self.epoch = -1
        self._bound: tuple[int, dict[str, Any]] | None = None  # (epoch, snapshot state) from a checkpoint

    def get(self, epoch: int) -> Any:
        """The current snapshot (read now if there is none yet)."""
        if self.current is None:
            self._read(self.epoch_of() if self.epoch_of is not None else epoch)
        return self.current

    def begin(self, epoch: int) -> None:
        """Epoch ``epoch`` begins: a new snapshot if there is none or ``refresh`` and the epoch is new."""
        if self.current is None or (self.refresh and int(epoch) != self.epoch):
            self._read(int(epoch))

    def _read(self, epoch: int) -> None:
        bound = self._bound[1] if self._bound is not None and self._bound[0] == epoch else None
        upto = bound.get("last_key") if bound is not None else None
        current = self.read(epoch, upto)
        if bound is not None and _size(current) != int(bound["rows"]):
            log.warning(
                "The snapshot of epoch %d held %d rows when the checkpoint was saved; %d rows with keys up to %s "
                "are there now (rows were deleted, or inserted below the largest key), so the resumed epoch "
                "reads the rows as they are now and its position is approximate.",
                epoch, int(bound["rows"]), _size(current), upto,
            )  # fmt: skip
        self.current, self.epoch = current, epoch

    def state(self) -> dict[str, Any] | None:
        """What a checkpoint keeps of the snapshot: its size and largest key."""
        if self.current is None:
            return self._bound[1] if self._bound is not None else None
        if isinstance(self.current, KeyRanges):
            return {"rows": self.current.rows, "last_key": self.current.last_key}
        keys = self.current
        return {"rows": len(keys), "last_key": int(keys[-1]) if len(keys) else None}

    def restore(self, epoch: int, state: Mapping[str, Any]) -> None:
        """Make epoch ``epoch`` read the checkpoint's snapshot again (the keys up to its largest)."""
        self._bound = (int(epoch), dict(state))
        current = self.epoch_of() if self.epoch_of is not None else int(epoch)
        if current == int(epoch) and (self.current is None or self.epoch == int(epoch)):
            self._read(int(epoch))


def _size(snapshot: np.ndarray | KeyRanges) -> int:
    return snapshot.rows if isinstance(snapshot, KeyRanges) else len(snapshot)


class SnapshotDraw(DistributedDraw):
    """A :class:`~chute.loader.orders.DistributedDraw` over changing data: each epoch reads its
    :class:`Snapshots` when it begins, and a checkpoint keeps which rows it read."""

    snapshots: Snapshots

    def set_epoch(self, epoch: int) -> None:
        self.snapshots.begin(epoch)
        super().set_epoch(epoch)

    def snapshot_state(self) -> dict[str, Any] | None:
        return self.snapshots.state()

    def restore_snapshot(self, epoch: int, state: Mapping[str, Any]) -> None:
        self.snapshots.restore(epoch, state)


class KeyOrder(SnapshotDraw):
    """The keys of a snapshot in the order an epoch reads them, shared across ranks in contiguous parts.

    Training shuffles blocks of ``block`` consecutive keys by ``(seed, epoch)``; evaluation reads
    the keys in order. Rank ``r`` of ``w`` takes the ``r``-th contiguous share (so its batches stay
    key ranges): in training all shares are equally long (the first ``< w`` keys repeat, for equal
    step counts), in evaluation they differ by at most one key and every key counts once.

    Args:
        snapshot: ``snapshot(epoch, upto)`` returns the sorted keys of the rows committed now (only
            keys ``<= upto`` when given: the resumed epoch's rows).
        train: Shuffle and pad (training) or not (evaluation).
        shuffle: Shuffle at all (training only).
        block: Keys moved together by the shuffle.
        seed, rank, world_size: See :class:`~chute.loader.orders.DistributedDraw`.
        refresh, epoch_of: See :class:`Snapshots`.
    """

    def __init__(
        self, snapshot: Callable[[int, int | None], np.ndarray], *, train: bool, shuffle: bool, block: int,
        seed: int, rank: int | None = None, world_size: int | None = None, refresh: bool = True,
        epoch_of: Callable[[], int] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(seed, rank, world_size, pad=train)
        self.snapshots = Snapshots(snapshot, refresh, epoch_of)
        self.shuffle, self.block = shuffle and train, max(int(block), 1)
        self._drawn: tuple[int, np.ndarray, np.ndarray] | None = None  # (epoch, keys, draw)

    @property
    def keys(self) -> np.ndarray:
        """The current snapshot's sorted keys (read at first use)."""
        keys: np.ndarray = self.snapshots.get(self.epoch)
        return keys

    @property
    def rows(self) -> int:
        """Rows in the current snapshot."""
        return len(self.keys)

    def draw(self, generator: torch.Generator) -> np.ndarray:
        keys = self.keys
        if not self.shuffle:
            return keys
        block, whole = self.block, len(keys) // self.block
        order = torch.randperm(-(-len(keys) // block), generator=generator).numpy()
        # Whole blocks copied straight into place (no index array as long as the keys: 20M keys peaked
        # at 0.7 GB that way); the last, partial block wherever the permutation put it.
        out = np.empty_like(keys)
        cut = int(np.flatnonzero(order == whole)[0]) if whole < len(order) else len(order)
        rows = keys[: whole * block].reshape(whole, block)
        np.take(rows, order[:cut], axis=0, out=out[: cut * block].reshape(cut, block))
        tail = keys[whole * block :]
        out[cut * block : cut * block + len(tail)] = tail
        after = order[cut + 1 :]
        np.take(rows, after, axis=0, out=out[cut * block + len(tail) :].reshape(len(after), block))
        return out

    def epoch_items(self, epoch: int | None = None) -> np.ndarray:
        epoch = self.epoch if epoch is None else epoch
        keys = self.keys
        if self._drawn is None or self._drawn[0] != epoch or self._drawn[1] is not keys:
            self._drawn = (epoch, keys, super().epoch_items(epoch))
        return self._drawn[2]


class KeyStream(SnapshotDraw):
    """Batches of keys streamed from a snapshot's :class:`KeyRanges` through a seeded shuffle buffer:
    the order of an epoch whose key index need not fit in memory.

    Training lays the ranges end to end in a ``(seed, epoch)`` order (the same on every rank); rank
    ``r`` of ``w`` takes the ``r``-th contiguous share of that sequence (:func:`~chute.datasets.shards.partition`,
    by row position), reads its ranges' keys one query at a time (``read``), and passes blocks of
    ``block`` consecutive keys through a shuffle buffer of ``buffer`` keys seeded by
    ``(seed, epoch, rank)``; batches are consecutive runs of ``batch_size`` keys. Every training
    share is ``ceil(rows / w)`` keys long (a short one repeats its first key), so ranks take equal
    steps. Evaluation reads the ranges in key order, unshuffled, each row once (shares differ by at
    most one row). Memory: the ranges, the buffer and one range's keys.

    It runs in the loader's main process (the DataLoader's sampler), so workers and threads only
    read the rows of the keys they are handed; a resumed epoch (``resume``) streams its keys again
    and skips the batches already trained on, reading no rows for them.

    A range whose rows changed while the epoch ran (rows deleted, or inserted with keys below the
    snapshot's largest: rows appended with growing keys never do this) is reported to ``changed``
    (by default raised) by the rank that reads the range's first row; a training share keeps its
    planned length (repeating its first key for rows gone), an evaluation share reads what is there.

    Args:
        snapshot: ``snapshot(epoch, upto)``: the :class:`KeyRanges` of the rows committed now.
        read: ``read(lo, hi)``: the split's sorted keys in ``lo..hi`` now.
        batch_size: Keys per batch.
        drop_last: Drop each rank's last, incomplete batch.
        train: Shuffle and pad (training) or not (evaluation).
        shuffle: Shuffle at all (training only).
        block: Consecutive keys kept together (a batch of 4,096 keys in blocks of 64 is 64 key ranges).
        buffer: Keys in the shuffle buffer (at most ``block`` disables it).
        seed: Seed of the range order and the buffer.
        rank, world_size: This rank and the number of ranks (``None``: torch.distributed's).
        refresh, epoch_of: See :class:`Snapshots`.
        changed: ``changed(error, rows)``: a range holds ``rows`` more or fewer rows than its
            snapshot said; raise ``error`` or count them.
    """

    def __init__(
        self, snapshot: Callable[[int, int | None], KeyRanges], read: Callable[[int, int], np.ndarray], *,
        batch_size: int, drop_last: bool, train: bool, shuffle: bool, block: int, buffer: int, seed: int,
        rank: int | None = None, world_size: int | None = None, refresh: bool = True,
        epoch_of: Callable[[], int] | None = None, changed: Callable[[DataError, int], None] | None = None,
    ) -> None:  # fmt: skip
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")
        super().__init__(seed, rank, world_size, pad=train)
        self.snapshots = Snapshots(snapshot, refresh, epoch_of)
        self.read = read
        self.batch_size, self.drop_last, self.train = batch_size, drop_last, train
        self.shuffle, self.block, self.buffer = shuffle and train, max(int(block), 1), max(int(buffer), 0)
        self.changed = changed

    @property
    def ranges(self) -> KeyRanges:
        """The current snapshot (read at first use)."""
        ranges: KeyRanges = self.snapshots.get(self.epoch)
        return ranges

    @property
    def rows(self) -> int:
        """Rows in the current snapshot."""
        return self.ranges.rows

    def share(self, epoch: int | None = None) -> list[tuple[int, int, int]]:
        """This rank's ``(range, start, stop)`` row positions in ``epoch`` (default: the current one),
        in reading order."""
        ranges = self.ranges
        order = np.arange(len(ranges))
        if self.shuffle:
            seed = derive_seed(self.seed, self.epoch if epoch is None else epoch)
            order = np.random.default_rng(seed).permutation(len(ranges))
        parts = partition(ranges.count[order].tolist(), self.num_replicas, self.rank)
        return [(int(order[i]), start, stop) for i, start, stop in parts]

    def share_rows(self) -> int:
        """Keys this rank reads each epoch (training: every rank as many)."""
        if self.train:
            return padded_share(self.rows, self.num_replicas)
        start, stop = rank_span(self.rows, self.num_replicas, self.rank)
        return stop - start

    def __len__(self) -> int:
        rows = self.share_rows()
        return rows // self.batch_size if self.drop_last else -(-rows // self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        epoch, skip, self._skip = self.epoch, self._skip, 0
        for i, batch in enumerate(self._batches(epoch)):
            if i >= skip:
                yield batch

    def batched(self, batch_size: int, drop_last: bool) -> Iterator[np.ndarray]:
        raise TypeError("KeyStream yields batches itself; use it as the loader's order, not inside Batched")

    def _keys(self, epoch: int) -> Iterator[np.ndarray]:
        """This rank's keys in reading order, a range (or less) at a time; training: padded to ``share_rows``."""
        ranges, wanted, given = self.ranges, self.share_rows(), 0
        first: np.ndarray | None = None
        for i, start, stop in self.share(epoch):
            lo, hi, count = int(ranges.lo[i]), int(ranges.hi[i]), int(ranges.count[i])
            keys = self.read(lo, hi)
            if len(keys) != count and start == 0:  # told once: by the rank that reads its first row
                self._changed(lo, hi, count, len(keys))
            part = keys[start:stop]
            if len(part):
                first = part[:1] if first is None else first
                given += len(part)
                yield part
        if self.train and given < wanted:  # a short share (or rows gone) repeats its first key: equal steps
            first = self._first_key(ranges) if first is None else first
            if first is not None:
                yield np.repeat(first, wanted - given)

    def _first_key(self, ranges: KeyRanges) -> np.ndarray | None:
        """The snapshot's first key still there, for a rank with none of its own (``None``: no rows left)."""
        for lo, hi in zip(ranges.lo.tolist(), ranges.hi.tolist(), strict=True):
            keys = self.read(lo, hi)
            if len(keys):
                return keys[:1]
        return None

    def _batches(self, epoch: int) -> Iterator[np.ndarray]:
        blocks: Iterator[np.ndarray] = (
            part[i : i + self.block] for part in self._keys(epoch) for i in range(0, len(part), self.block)
        )
        if self.shuffle and self.buffer > self.block:
            blocks = buffered(blocks, self.buffer // self.block, derive_seed(self.seed, epoch, self.rank))
        held: list[np.ndarray] = []
        count = 0
        for block in blocks:
            held.append(block)
            count += len(block)
            while count >= self.batch_size:
                keys = np.concatenate(held)
                yield keys[: self.batch_size]
                held, count = [keys[self.batch_size :]], count - self.batch_size
        if count and not self.drop_last:
            yield np.concatenate(held)

    def _changed(self, lo: int, hi: int, expected: int, found: int) -> None:
        what = "were deleted" if found < expected else "were inserted with keys below the snapshot's largest"
        error = DataError(
            f"Rows with keys {lo}..{hi} of the epoch's snapshot changed while it ran: {expected} rows when it "
            f"began, {found} now (rows {what}). data.index=stream reads each epoch's rows range by range and "
            "needs rows to arrive with growing keys; data.index=memory keeps each epoch's exact keys, or set "
            "data.on_error=skip to go on (the difference is counted as skipped rows)."
        )
        if self.changed is None:
            raise error
        self.changed(error, abs(expected - found))


class KeyBatches(Batched):
    """:class:`~chute.loader.Batched` over a :class:`KeyOrder`, whose snapshot a checkpoint keeps."""

    def snapshot_state(self) -> dict[str, Any] | None:
        return self.sampler.snapshot_state()

    def restore_snapshot(self, epoch: int, state: Mapping[str, Any]) -> None:
        self.sampler.restore_snapshot(epoch, state)
