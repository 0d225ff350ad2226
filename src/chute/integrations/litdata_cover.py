"""LitData training under DDP without losing samples: extra batches for what LitData leaves of an epoch.

Under DDP LitData gives every rank whole batches (``drop_last``) so that ranks take equal steps, and
leaves the rest of the epoch unread. :func:`covering_loader_class` is LitData's
``StreamingDataLoader`` plus extra batches, read by global index, that :func:`_cover_rest` deals
from LitData's own per-worker plan so that every rank ends on the same step (see
:class:`~chute.integrations.litdata.LitDataModule`). Both it and :func:`resumable_loader_class` (the
loader with ``drop_last``) resume a remote dataset from any local cache folder (:func:`relocated`).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from chute.integrations.litdata_retry import Outage, retrying
from chute.loader.workers import stops_workers_when_collected


def relocated(state: dict[str, Any], dataset: Any) -> dict[str, Any]:
    """LitData loader ``state`` with the local cache paths of ``dataset`` when both stream the same URL.

    LitData records where a remote dataset was cached and refuses a resume from any other folder, so a
    job resumed on another node, or with another ``TMPDIR`` under SLURM, would fail. For the same URL
    the cache is only a copy: the state is made to point at this run's.
    """
    saved = state.get("dataset")
    url = getattr(dataset.input_dir, "url", None)
    if not isinstance(saved, dict) or url is None or saved.get("input_dir_url") != url:
        return state
    return {
        **state,
        "dataset": {**saved, "input_dir_path": dataset.input_dir.path, "cache_dir_path": dataset.cache_dir.path},
    }


@functools.cache
def resumable_loader_class() -> type:
    """LitData's ``StreamingDataLoader`` that resumes a remote dataset whatever its local cache folder
    (:func:`relocated`; defined on first use: litdata is optional)."""
    from litdata import StreamingDataLoader

    class ResumableStreamingDataLoader(StreamingDataLoader):
        """Also: ``outage``, the retry budget of a remote input (:mod:`.litdata_retry`; None reads once,
        as LitData does); ``replay``, every pass is LitData's first epoch again (under
        ``Trainer(overfit_batches=N)``). Both are constructor arguments because Lightning re-makes a
        loader from them when it turns shuffling off for ``overfit_batches``."""

        def __init__(self, *args: Any, outage: Outage | None = None, replay: bool = False, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.outage = outage
            self.replay = replay

        def __iter__(self) -> Any:
            if self.replay and not self.restore:
                self.current_epoch = 0  # LitData counts it to 1 as the pass starts: its first epoch's order
            if self.outage is None:
                yield from super().__iter__()
            else:
                yield from retrying(self, super().__iter__, self.outage)

        def load_state_dict(self, obj: dict[str, Any]) -> None:
            # LitData counts the worker of each batch on a cycle that load_state_dict advances to the
            # saved worker but does not restart: on a loader that already iterated (a retry, which
            # loads a state in the same process) it advances from where the failed pass left it, so
            # the worker it records for every later batch is off by one, and the next state saved in
            # that epoch (a second outage, a checkpoint) resumes at the wrong worker: batches swapped.
            self._worker_idx = None
            super().load_state_dict(relocated(obj, self.dataset))

        def _get_iterator(self) -> Any:
            return stops_workers_when_collected(super()._get_iterator())

        def read_item(self, reader: Any, index: int) -> Any:
            """Sample ``index`` read by ``reader`` (a LitData dataset), retried within the budget."""
            if self.outage is None:
                return reader[index]
            return self.outage.call(lambda: reader[index], reset=reader.reset)

    return ResumableStreamingDataLoader


@functools.cache
def covering_loader_class() -> type:
    """LitData's ``StreamingDataLoader`` that also reads what LitData leaves of each epoch (defined on
    first use: litdata is optional)."""

    class CoveringStreamingDataLoader(resumable_loader_class()):  # type: ignore[misc]
        """After LitData's batches, the extra batches :func:`_cover_rest` deals this rank, read by global
        index in this process; their count is saved in ``state_dict`` beside LitData's state."""

        def __init__(self, dataset: Any, *, outage: Outage | None = None, replay: bool = False, **kwargs: Any) -> None:
            super().__init__(dataset, outage=outage, replay=replay, **kwargs)
            self._extra_done = 0  # extra batches yielded this epoch
            self._resume_extra = False
            self._reader: Any = None
            self._plans: dict[int, tuple[int, list[list[int]]]] = {}

        def __len__(self) -> int:
            resuming = self.restore or self._resume_extra
            return self._plan(self.current_epoch if resuming else self.current_epoch + 1)[0]

        def __iter__(self) -> Any:
            if self._resume_extra:  # saved after LitData's part of the epoch: only extra batches are left
                self._resume_extra = False
                rest = self._plan(self.current_epoch)[1][self._extra_done :]
                if rest:
                    yield from self._read(rest)
                    return
            self._extra_done = 0
            yield from super().__iter__()
            yield from self._read(self._plan(self.current_epoch)[1])

        def _read(self, batches: list[list[int]]) -> Any:
            if batches and self._reader is None:
                # A copy without the iteration's state: LitData's reader maps only the chunks this rank
                # streams, and would open (and leak) a file handle for any other.
                self._reader = copy.copy(self.dataset)
                self._reader.reset()
            for indices in batches:
                batch = self.collate_fn([self.read_item(self._reader, index) for index in indices])
                self._extra_done += 1
                yield batch

        def _plan(self, epoch: int) -> tuple[int, list[list[int]]]:
            """(batches per rank, this rank's extra batches) of ``epoch``, as every rank computes them."""
            if epoch not in self._plans:
                dataset, env = self.dataset, self.dataset.distributed_env
                dataset.get_len(self.num_workers, self.batch_size)  # builds LitData's shuffler here
                _, intervals = dataset.shuffler.get_chunks_and_intervals_per_workers(
                    env, max(self.num_workers, 1), self.batch_size, epoch
                )
                order = np.random.default_rng([dataset.seed, epoch]) if dataset.shuffle else None
                chunks = dataset.shuffler.cache.get_chunk_intervals()
                steps, extra = _cover_rest(intervals, chunks, env.world_size, self.batch_size, order)
                self._plans = {epoch: (steps, extra[env.global_rank])}
            return self._plans[epoch]

        def state_dict(self) -> dict[str, Any]:
            return {**super().state_dict(), "chute_extra_batches": self._extra_done}

        def load_state_dict(self, obj: dict[str, Any]) -> None:
            super().load_state_dict(obj)
            self._extra_done = int(obj.get("chute_extra_batches", 0))
            # LitData resumes only an unfinished part (``restore``); a checkpoint past it resumes the
            # extra batches, or starts the next epoch when none are left.
            self._resume_extra = self._extra_done > 0 or (not self.restore and obj["num_samples_yielded"] > 0)

    return CoveringStreamingDataLoader


def _cover_rest(
    workers_intervals: Sequence[Sequence[Sequence[int]]],
    chunk_intervals: Sequence[Sequence[int]],
    world_size: int,
    batch_size: int,
    order: np.random.Generator | None = None,
) -> tuple[int, list[list[list[int]]]]:
    """Extra batches that read the samples LitData's plan leaves out and end every rank on the same step.

    Args:
        workers_intervals: LitData's plan: per worker (rank-major), ``[chunk_start, first, stop, chunk_end]``
            global index ranges it reads.
        chunk_intervals: Every chunk's interval in the same form.
        world_size: Ranks; ``len(workers_intervals)`` is a multiple of it.
        batch_size: Samples per batch; a worker yields ``ceil(its samples / batch_size)`` batches.
        order: Shuffles the left-out samples before they are dealt (else index order).

    Returns:
        The number of batches every rank yields, and per rank its extra batches (global indices). The
        left-out samples are dealt round-robin over the fewest extra batches that hold them (each rank
        first catches up with the busiest one), so batch sizes differ by at most one; a sample repeats
        only where there are fewer left-out samples than extra batches (at most ``world_size - 1``
        repeats when LitData gives every rank the same number of batches).

    Example:
        >>> _cover_rest([[[0, 0, 4, 5]], [[5, 5, 9, 10]]], [[0, 0, 5, 5], [5, 5, 10, 10]], 2, 2)
        (3, [[[4]], [[9]]])
    """
    per_rank = len(workers_intervals) // world_size
    steps = [
        sum(
            -(-sum(i[2] - i[1] for i in worker) // batch_size)
            for worker in workers_intervals[r * per_rank :][:per_rank]
        )
        for r in range(world_size)
    ]
    rest = _unread(workers_intervals, chunk_intervals)
    if order is not None:
        rest = order.permutation(rest).tolist()
    most = max(steps, default=0)
    behind = sum(most - s for s in steps)
    rounds = max(0, -(-(len(rest) - behind * batch_size) // (world_size * batch_size)))
    counts = [most + rounds - s for s in steps]
    slots = sum(counts)
    if slots == 0:
        return most, [[] for _ in steps]
    pool = rest or [int(chunk_intervals[0][1])]  # ranks uneven with nothing left out: repeat a sample
    items = [pool[i % len(pool)] for i in range(max(len(rest), slots))]
    batches = [items[j::slots] for j in range(slots)]
    starts = np.cumsum([0, *counts]).tolist()
    return most + rounds, [batches[starts[r] : starts[r + 1]] for r in range(world_size)]


def _unread(
    workers_intervals: Sequence[Sequence[Sequence[int]]], chunk_intervals: Sequence[Sequence[int]]
) -> list[int]:
    """Global indices of the chunks' samples that no worker's interval covers, in index order."""
    read = sorted((int(i[1]), int(i[2])) for worker in workers_intervals for i in worker if i[2] > i[1])
    rest: list[int] = []
    k = 0
    for _, start, stop, _ in sorted((tuple(int(x) for x in c) for c in chunk_intervals), key=lambda c: c[1]):
        position = start
        while k < len(read) and read[k][0] < stop:  # a worker's interval never spans two chunks
            rest.extend(range(position, read[k][0]))
            position = max(position, read[k][1])
            k += 1
        rest.extend(range(position, stop))
    return rest
