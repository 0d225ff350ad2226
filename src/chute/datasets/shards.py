"""The stream that reads a shard folder (:mod:`chute.datasets.shard_format`) each sample once per epoch.

:class:`ShardStream` splits an epoch across distributed ranks by sample position, not by whole shard:
the shards (in a per-epoch order shared by every rank) are laid end to end and each rank reads one
contiguous range of that sequence (the one split rule, :func:`chute.loader.distributed.rank_span`).
So each sample is read exactly once per epoch for any world size, even with fewer shards than ranks
or shards of uneven size, and ranks differ by at most one sample. Within a rank, one shuffle buffer
and fixed batch boundaries make the batches the same for any number of DataLoader workers, which
take turns at them. Those batches can also be read one at a time by line position
(:meth:`ShardStream.line_plan`, :class:`ShardLines`), as Ray tasks read them
(:mod:`chute.integrations.ray_streams`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from chute.bad_samples import BadSamples, OnError
from chute.datasets.shard_format import Layout, check_layout, decode_sample
from chute.errors import DataError
from chute.loader import SharedEpoch, derive_seed, world_position
from chute.loader.distributed import rank_span
from chute.loader.streams import buffered, partition

# -- Samples to JSON and back ------------------------------------------------------------------


# -- Writing -----------------------------------------------------------------------------------


# -- Reading: exactly once across ranks, the same batches for any worker count ---------------


class ShardStream(IterableDataset[Any]):
    """Batches from JSONL shards: each sample once per epoch across ranks, the same batches for any worker count.

    Each rank reads one contiguous range of the epoch's shard sequence (:func:`partition` over the
    ranks), passes its lines through one shuffle buffer seeded by (seed, epoch, rank) and cuts the
    result into runs of ``batch_size`` lines: batch ``g`` is the ``g``-th run. A rank's batches are
    a function of seed, epoch, rank, world size and data, not of ``num_workers``.

    DataLoader worker ``w`` of ``W`` yields the batches ``g`` with ``g % W == w``, in order; the
    DataLoader takes one batch from each worker in turn, so they arrive as ``0, 1, 2, ...``. Every
    worker reads the rank's whole range and runs the same buffer over the raw lines, but decodes,
    transforms and collates only its own batches.

    Args:
        shards: ``(path, count)`` per shard, e.g. ``ShardIndex.read(root).shards("train")``.
        batch_size: Samples per batch (the stream batches, so the DataLoader runs with ``batch_size=None``).
        collate_fn: Turns a list of samples into a batch.
        shuffle_shards: Shuffle the shard order each epoch (the same order on every rank).
        buffer_size: Lines in the rank's shuffle buffer (0: no sample shuffling); larger mixes more.
            Each worker holds its own copy, as raw text.
        seed: Seed; the epoch and the rank are mixed in.
        drop_last: Drop the rank's last incomplete batch.
        rank: Distributed rank (``None``: :func:`~chute.loader.world_position`: torch.distributed, else
            the launcher's ``RANK`` or ``SLURM_PROCID``).
        world_size: Number of ranks (``None``: likewise, ``WORLD_SIZE`` or ``SLURM_NTASKS``).
        transform: Optional callable applied to each decoded sample.
        on_error: A line that is not a valid sample (not JSON, or not an encoded sample): ``"raise"`` a
            :class:`~chute.errors.DataError` naming the shard and the line, or ``"skip"`` it, count and
            log it and raise once more than 1% are bad; a :class:`~chute.bad_samples.BadSamples` sets
            the fraction and shares the counts. A skipped line makes its batch one sample smaller (the
            batch boundaries stay). A batch whose lines are all bad is replaced, with ``even_ranks``,
            by the batch a short rank repeats; without, it is left out: the rank then yields one batch
            fewer than ``len``, and with workers the later batches may arrive in another order.
        layout: The layout the split's samples share (``ShardIndex.read(root).layout("train")``): a
            line whose sample differs from it (a field's shape, dtype, type or keys) is a bad line,
            named or skipped like one that is not JSON, instead of a row padded or cut by the
            collate function. ``None``: not checked.
        even_ranks: Every rank yields the same number of batches (training under DDP: a rank with
            fewer would leave the others waiting in the gradient all-reduce): a rank short of the
            longest repeats its first batch (its first with a readable line; a rank with none repeats
            another rank's). ``False`` (evaluation): each sample exactly once, ranks may differ by a
            batch.

    Resuming mid-epoch (:meth:`resume`): with ``c`` batches consumed on this rank the next is batch
    ``c``, and the new DataLoader asks worker 0 first, so worker ``w`` yields the batches ``g >= c``
    with ``g % W == (w + c) % W``. The consumed lines go through the buffer again, undecoded.
    """

    def __init__(
        self,
        shards: Sequence[tuple[str, int]],
        batch_size: int,
        collate_fn: Callable[[list[Any]], Any],
        *,
        shuffle_shards: bool = True,
        buffer_size: int = 1000,
        seed: int = 0,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        transform: Callable[[Any], Any] | None = None,
        on_error: OnError | BadSamples = "raise",
        layout: Layout | None = None,
        even_ranks: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")
        self.shards = [(str(p), int(n)) for p, n in shards]
        self.batch_size = batch_size
        self.collate_fn = collate_fn
        self.shuffle_shards = shuffle_shards
        self.buffer_size = max(0, buffer_size)
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.transform = transform
        self.bad_samples = on_error if isinstance(on_error, BadSamples) else BadSamples(on_error, what="line")
        self.layout = layout
        self.even_ranks = even_ranks
        # Shared memory, so persistent workers see what the main process sets: the epoch, and the
        # (epoch, batches consumed) to resume from (-1: none).
        self._epoch = SharedEpoch()
        with torch.inference_mode(False):  # updated from any thread, in or out of inference mode
            self._resume = torch.full((2,), -1, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Lay out epoch ``epoch`` next; also logs lines skipped so far (``on_error="skip"``) if there are new ones."""
        self._epoch.set(epoch)
        if int(self._resume[0]) != epoch:
            self._resume.fill_(-1)  # a resume offset belongs to the epoch it was saved in
        self.bad_samples.report()

    def resume(self, epoch: int, batches: int) -> None:
        """Make the next pass epoch ``epoch`` without its first ``batches`` batches (on this rank)."""
        self._epoch.set(epoch)
        self._resume[0], self._resume[1] = epoch, batches

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    def resumed_batches(self) -> int:
        """The batches this pass skips: those consumed before :meth:`resume`, if it is that epoch."""
        return max(int(self._resume[1]), 0) if int(self._resume[0]) == self.epoch else 0

    @property
    def num_samples(self) -> int:
        return sum(n for _, n in self.shards)

    def copy_at(self, rank: int, world_size: int) -> ShardStream:
        """A copy to read in another process (a Ray task): this pass's rank and world size fixed, since
        the launcher's environment there is not this rank's."""
        other = copy.copy(self)
        other.rank, other.world_size = rank, world_size
        return other

    def _position(self) -> tuple[int, int]:
        return world_position(self.rank, self.world_size)

    def rank_ranges(self, rank: int, world_size: int) -> list[tuple[int, int, int]]:
        """``(shard, start, stop)`` line ranges ``rank`` reads this epoch (shard indices into ``self.shards``)."""
        order = self._shard_order()
        ranges = partition([self.shards[i][1] for i in order], world_size, rank)
        return [(order[s], start, stop) for s, start, stop in ranges]

    def _shard_order(self) -> list[int]:
        if not self.shuffle_shards:
            return list(range(len(self.shards)))
        return np.random.default_rng(derive_seed(self.seed, self.epoch)).permutation(len(self.shards)).tolist()

    def rank_batches(self, rank: int, world_size: int) -> int:
        """Batches cut from ``rank``'s lines each epoch (no ``even_ranks`` padding; the same every epoch)."""
        start, stop = rank_span(self.num_samples, world_size, rank)  # as partition() splits
        lines = stop - start
        return lines // self.batch_size if self.drop_last else -(-lines // self.batch_size)

    def planned_batches(self, rank: int, world_size: int) -> int:
        """Batches ``rank`` yields each epoch, ``even_ranks`` padding included."""
        if self.even_ranks and world_size > 1:
            return max(self.rank_batches(r, world_size) for r in range(world_size))
        return self.rank_batches(rank, world_size)

    def __len__(self) -> int:
        """Batches this rank yields per epoch, for any number of workers."""
        return self.planned_batches(*self._position())

    def __iter__(self) -> Iterator[Any]:
        rank, world = self._position()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        consumed = self.resumed_batches()
        # After a resume the new DataLoader asks worker 0 first, so worker 0 makes batch `consumed`.
        mine = range(consumed + worker, self.planned_batches(rank, world), workers)
        if not mine:
            return
        repeat: Any = None  # the batch repeated for a missing one, found when first needed
        for g, run in enumerate(self._runs(rank, world)):  # to the end, so every worker finds a truncated shard
            if g not in mine:
                continue
            batch = self._collate_run(run, count=True)
            if batch is _BAD and self.even_ranks:  # every line bad: keep the planned count
                repeat = self._first_batch(rank, world) if repeat is None else repeat
                batch = repeat
            if batch is not _BAD:
                yield batch
        for _ in range(len(mine) - len(range(mine.start, self.rank_batches(rank, world), workers))):
            repeat = self._first_batch(rank, world) if repeat is None else repeat  # even out the ranks
            if repeat is not _BAD:
                yield repeat

    def _shuffled(self, items: Iterator[Any], rank: int) -> Iterator[Any]:
        """``items`` (a rank's lines, or their positions) in the order its batches take them. The
        buffer's draws depend on the number of items alone, so lines and positions come out alike."""
        if self.buffer_size > 1:
            return buffered(items, self.buffer_size, derive_seed(self.seed, self.epoch, rank))
        return items

    def line_plan(self, rank: int, world: int) -> np.ndarray:
        """``(shard, line)`` of each line ``rank`` reads this epoch, in the order its batches take them:
        batch ``g`` is rows ``g * batch_size`` to ``(g + 1) * batch_size``. From the index alone (no
        file is read), for readers that fetch lines by position (:class:`ShardLines`): Ray tasks,
        one batch each (:mod:`chute.integrations.ray_streams`)."""
        ranges = self.rank_ranges(rank, world)
        positions = ((shard, line) for shard, start, stop in ranges for line in range(start, stop))
        plan = np.array(list(self._shuffled(positions, rank)), dtype=np.int64).reshape(-1, 2)
        return plan[: len(plan) // self.batch_size * self.batch_size] if self.drop_last else plan

    def planned_batch(self, plan: np.ndarray, g: int, lines: ShardLines) -> Any:
        """Batch ``g`` of this rank's pass read by position from its :meth:`line_plan`: the batch
        iterating the stream makes for ``g`` (``None`` for one it leaves out: every line bad, without
        ``even_ranks``). Bad lines are counted or raised for here, by the one reader of the batch."""
        rank, world = self._position()
        if g < self.rank_batches(rank, world):
            rows = plan[g * self.batch_size : (g + 1) * self.batch_size]
            batch = self._collate_run(lines.read(rows), count=True)
            if batch is not _BAD:
                return batch
            if not self.even_ranks:
                return None
        batch = self._first_batch(rank, world)  # a short rank's repeat (even_ranks)
        return None if batch is _BAD else batch

    def _runs(self, rank: int, world: int) -> Iterator[list[tuple[int, int, bytes]]]:
        """``rank``'s batches as runs of raw ``(shard, line, text)``, in order; the last may be short."""
        lines = self._shuffled(self._lines(self.rank_ranges(rank, world)), rank)
        run: list[tuple[int, int, bytes]] = []
        for line in lines:
            run.append(line)
            if len(run) == self.batch_size:
                yield run
                run = []
        if run and not self.drop_last:
            yield run

    def _lines(self, ranges: list[tuple[int, int, int]]) -> Iterator[tuple[int, int, bytes]]:
        for shard, start, stop in ranges:
            path = self.shards[shard][0]
            lines = 0
            # Bytes: json.loads reads UTF-8 from them, and a line that is not UTF-8 is one bad line
            # (named, or skipped under on_error=skip), not a UnicodeDecodeError ending the epoch.
            indexed = self.shards[shard][1]
            with open(path, "rb") as f:
                _not_compressed(path, f.peek(6))
                for line_no, text in enumerate(f):
                    if line_no >= stop:
                        if stop == indexed and text.strip():  # the shard's end: lines its index does not count
                            raise _longer(path, indexed)
                        break
                    lines = line_no + 1
                    if line_no >= start:
                        yield shard, line_no, text
            if lines < stop:
                raise _truncated(path, lines, indexed)

    def _collate_run(self, run: list[tuple[int, int, bytes]], count: bool) -> Any:
        """The batch of ``run``'s readable lines (``_BAD`` if none); ``count``: apply ``on_error`` and count."""
        bad = self.bad_samples
        if count and bad.skipping:
            bad.seen(len(run))
        samples = []
        for shard, line_no, text in run:
            try:
                sample = decode_sample(json.loads(text))
                if self.layout is not None:
                    check_layout(sample, self.layout)
            except (ValueError, TypeError, KeyError, AttributeError) as err:  # not JSON, not a sample, unlike the rest
                if count:  # only the worker that owns the batch, so each bad line counts once
                    path = self.shards[shard][0]
                    bad.skip(f"'{path}', line {line_no + 1}", _line_error(path, line_no + 1, err, bad.skipping))
                continue
            samples.append(sample if self.transform is None else self.transform(sample))
        return self.collate_fn(samples) if samples else _BAD

    def _first_batch(self, rank: int, world: int) -> Any:
        """The batch that stands in for a missing one: ``rank``'s first with a readable line, else another rank's."""
        for r in dict.fromkeys([rank, *range(world)]):
            for run in self._runs(r, world):
                batch = self._collate_run(run, count=False)  # its owner counts (or raises for) its bad lines
                if batch is not _BAD:
                    return batch
        return _BAD


_BAD = object()  # stands for a run of lines none of which decoded


def _truncated(path: str, lines: int, indexed: int) -> DataError:
    return DataError(
        f"Shard '{path}' has {lines} lines but its index says {indexed}; it was truncated or rewritten: "
        "write the shards again."
    )


# What a compressed file starts with: such a shard is named as one, not as a first line that is not UTF-8.
_COMPRESSED = {
    b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd", b"PK\x03\x04": "zip"
}  # fmt: skip


def _not_compressed(path: str, head: bytes) -> None:
    for magic, name in _COMPRESSED.items():
        if head.startswith(magic):
            raise DataError(
                f"Shard '{path}' is {name}-compressed; shards are plain JSONL text: decompress it under the "
                "same name, or write the shards again."
            )


def _longer(path: str, indexed: int) -> DataError:
    return DataError(
        f"Shard '{path}' has more lines than the {indexed} its index says; lines were added after the "
        "shards were written, and would not be read: write the shards again."
    )


class ShardLines:
    """Lines of a shard folder's files read by position: ``(shard, line)`` -> the line's bytes.

    Each shard is scanned once for where its lines start (kept: 8 bytes a line), then read by seeking.
    A shard with fewer lines than a position asks for is a :class:`~chute.errors.DataError` naming
    the file, as when a stream reads it.

    Args:
        shards: ``(path, count)`` per shard, as :class:`ShardStream` takes them.
    """

    def __init__(self, shards: Sequence[tuple[str, int]]) -> None:
        self.shards = [(str(p), int(n)) for p, n in shards]
        self._starts: dict[int, np.ndarray] = {}

    def read(self, rows: np.ndarray) -> list[tuple[int, int, bytes]]:
        """``(shard, line, text)`` for each ``(shard, line)`` row of ``rows``, in their order."""
        texts: dict[tuple[int, int], bytes] = {}
        for shard in dict.fromkeys(rows[:, 0].tolist()):
            lines = rows[rows[:, 0] == shard, 1]
            starts = self._line_starts(shard, int(lines.max()) + 1)
            with open(self.shards[shard][0], "rb") as f:
                for line in sorted(lines.tolist()):
                    f.seek(int(starts[line]))
                    texts[shard, line] = f.read(int(starts[line + 1] - starts[line]))
        return [(shard, line, texts[shard, line]) for shard, line in rows.tolist()]

    def _line_starts(self, shard: int, needed: int) -> np.ndarray:
        """Byte offsets where the shard's lines start, and its end (``len(lines) + 1`` values)."""
        starts = self._starts.get(shard)
        if starts is None:
            path = self.shards[shard][0]
            with open(path, "rb") as f:
                data = np.frombuffer(f.read(), dtype=np.uint8)
            _not_compressed(path, data[:6].tobytes())
            ends = np.flatnonzero(data == ord("\n")) + 1  # a line's bytes end with its newline, as a file yields it
            if len(data) and data[-1] != ord("\n"):
                ends = np.append(ends, len(data))  # a last line without one
            starts = self._starts[shard] = np.concatenate([[0], ends]).astype(np.int64)
            indexed = self.shards[shard][1]
            if len(starts) - 1 > indexed and data[starts[indexed] :].tobytes().strip():
                raise _longer(path, indexed)  # lines past the index's count, not blank ones
        if len(starts) - 1 < needed:
            raise _truncated(self.shards[shard][0], len(starts) - 1, self.shards[shard][1])
        return starts


def _line_error(path: str, line: int, err: Exception, skipping: bool) -> DataError:
    """The error for a shard line that does not decode, naming the shard file and the line."""
    if isinstance(err, json.JSONDecodeError):
        what = f"is not JSON ({err.msg} at column {err.colno})"
    elif isinstance(err, UnicodeDecodeError):
        what = f"is not UTF-8 text (byte {err.object[err.start]:#04x} at column {err.start + 1})"
    else:
        what = f"is not a valid sample ({err})"
    hint = "" if skipping else " Write the shards again, or set data.on_error=skip to skip such lines."
    return DataError(f"Shard '{path}', line {line} {what}.{hint}")
