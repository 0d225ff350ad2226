"""Splitting a stream's positions across readers and shuffling it through a buffer: the pieces every
streamed order shares (shard streams, :class:`~chute.datasets.shards.ShardStream`, and a SQL
table's key stream, :class:`~chute.loader.key_orders.KeyStream`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from chute.loader.distributed import rank_span

__all__ = ["buffered", "partition"]


def partition(counts: Sequence[int], consumers: int, consumer: int) -> list[tuple[int, int, int]]:
    """The ``(shard, start, stop)`` line ranges that reader ``consumer`` of ``consumers`` reads.

    Shards are laid end to end in the given order; reader ``c`` takes global positions
    ``[c * N // C, (c + 1) * N // C)``. Every position belongs to exactly one reader.

    Example:
        >>> [partition([3, 1, 4], 3, c) for c in range(3)]
        [[(0, 0, 2)], [(0, 2, 3), (1, 0, 1), (2, 0, 1)], [(2, 1, 4)]]
    """
    lo, hi = rank_span(int(sum(counts)), consumers, consumer)  # the one rule every order splits by
    ranges = []
    offset = 0
    for shard, count in enumerate(counts):
        start, stop = max(lo, offset), min(hi, offset + count)
        if start < stop:
            ranges.append((shard, start - offset, stop - offset))
        offset += count
    return ranges


def buffered(items: Iterator[Any], size: int, seed: int) -> Iterator[Any]:
    """``items`` through a shuffle buffer: each new item swaps out a random one of ``size`` held, then the rest."""
    rng = np.random.default_rng(seed)
    buffer: list[Any] = []
    picks: list[int] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        if not picks:  # drawn in blocks: one draw per line would cost more than reading it
            picks = rng.integers(size, size=1024).tolist()
        i = picks.pop()
        buffer[i], item = item, buffer[i]
        yield item
    for i in rng.permutation(len(buffer)).tolist():
        yield buffer[i]
