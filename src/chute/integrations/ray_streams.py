"""Reading a shard stream on a Ray cluster (``data=streaming`` with ``loader.backend=ray|ray_data``).

A shard stream (:class:`~chute.datasets.ShardStream`) decides its batches from its index alone: the
rank's contiguous range of line positions (the one split rule), in an epoch's shard order, through a
seeded shuffle buffer whose draws depend on how many lines there are, not on what they say. So when a
pass starts, this loader lays out the rank's batches as line positions
(:meth:`~chute.datasets.ShardStream.line_plan`, no file read) and each batch becomes one finite job,
as an index batch is for map-style data: a Ray task (``tasks`` engine) or a row of a Ray Data
pipeline (``data`` engine) reads that batch's lines by position on the cluster
(:class:`~chute.datasets.shards.ShardLines`), decodes, transforms and collates them
(:meth:`~chute.datasets.ShardStream.planned_batch`). Everything else is
:class:`~chute.integrations.ray_tasks.RayLoader`'s: the window of batches in flight, the order they
are handed out in, bad lines named or counted across the cluster boundary.

Why not the DataLoader workers' way (each reader streams the rank's whole range and keeps every
``W``-th batch): a Ray task that streams until its consumer takes each batch holds its CPU while it
waits, so a second loader's tasks (a resumed loader, or validation in the middle of an epoch) could
not be placed on a full cluster; measured here, that deadlocked a resume on 2 CPUs. Finite tasks
free their CPU when they return.

What holds: the batches are the ones worker processes make (those of any worker count: the same
buffer, the same runs, a short rank's repeat); each line once per epoch across ranks with equal
steps; exact mid-epoch resume (the position is the loader's; a resumed pass plans only the batches
left); a bad line named (its :class:`~chute.errors.DataError`, raised here as its class), or with
``on_error=skip`` skipped and counted in the trainer's counts; a truncated shard named. The cost:
each Ray worker process scans a shard once per pass for where its lines start (as each DataLoader
worker reads the rank's whole range), and the trainer computes the rank's line plan (the shuffle
buffer over positions) each pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from chute.datasets.shards import ShardLines, ShardStream
from chute.integrations.ray_tasks import RayLoader
from chute.loader.distributed import world_position


class RayStreamLoader(RayLoader):
    """A chute loader whose shard stream is read by Ray on a cluster (see the module docstring).

    Args:
        stream: The shard stream; its epoch and resume are this loader's (as with worker processes).
        collate_fn: Applied on the cluster to each batch the stream makes (the batch hook on a CPU
            trainer), as a DataLoader with ``batch_size=None`` applies its ``collate_fn``.
        options: ``tasks``, ``engine``, ``prefetch``, ``pin_memory``, ``feed``, ``epoch_of``, as for
            :class:`~chute.integrations.ray_tasks.RayLoader`.
    """

    def __init__(self, stream: ShardStream, collate_fn: Callable[[Any], Any] | None = None, **options: Any) -> None:
        super().__init__(stream, stream, collate_fn, seed=stream.seed, **options)
        self.sampler = None  # type: ignore[assignment]  # a stream orders itself, as under a DataLoader

    @property
    def order(self) -> ShardStream:
        return self.dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def _plan(self) -> tuple[Callable[[int], Any], int]:
        stream: ShardStream = self.dataset
        rank, world = world_position(stream.rank, stream.world_size)  # here, not on the cluster
        first, planned = stream.resumed_batches(), stream.planned_batches(rank, world)
        if first >= planned:
            return _StreamBatches(stream, np.empty((0, 2), np.int64), 0, None), 0
        pinned = stream.copy_at(rank, world)  # this pass's epoch and position, whatever the cluster's rank
        return _StreamBatches(pinned, stream.line_plan(rank, world), first, self.collate_fn), planned - first


class _StreamBatches:
    """On the cluster: batch ``first + k`` of the stream's pass from ``k``, read by position."""

    def __init__(
        self, stream: ShardStream, plan: np.ndarray, first: int, collate_fn: Callable[[Any], Any] | None
    ) -> None:
        self.stream, self.plan, self.first, self.collate_fn = stream, plan, first, collate_fn
        self._lines: ShardLines | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_lines": None}  # each worker process scans for itself

    def __call__(self, k: int) -> Any:
        if self._lines is None:
            self._lines = ShardLines(self.stream.shards)
        batch = self.stream.planned_batch(self.plan, self.first + k, self._lines)
        return self.collate_fn(batch) if batch is not None and self.collate_fn is not None else batch


__all__ = ["RayStreamLoader"]
