"""Building loaders: the one place chute makes a loader, for any split, backend and kind of data.

Every loader chute returns is made by :func:`build_loader` and shares one behaviour
(:class:`Passes`), whatever runs it (DataLoader worker processes, loader threads, the calling thread):

- It is driven by one *order* (:class:`~chute.loader.orders.Order`): a sampler of index batches
  (map-style data) or the stream itself (a dataset that yields whole batches). The loader tells it
  the epoch when a pass starts (the trainer's epoch when attached, else the pass count).
- Its position is its own ``state_dict()``: the epoch and how many of the order's batches this
  pass has handed out (counted where they leave the loader, so worker prefetch is not counted).
  ``load_state_dict`` makes the next pass of that epoch start after them. Lightning saves and
  restores it with every checkpoint of a training loader that has both methods.
- A pass starts lazily, at its first batch, so an epoch set after ``iter()`` (Lightning calls
  ``iter`` before ``set_epoch``) still decides the order.
- A batch with no samples (every sample of it left out, e.g. unreadable images in evaluation with
  ``on_error="skip"``) is never handed to the model; it still counts towards the position.
- An order over data that changes between epochs (:class:`~chute.loader.orders.SnapshotOrder`) also
  records which rows the epoch read in the position, and a resumed pass reads those rows again.
- It keeps the time its consumer spent waiting inside it for batches (``waited_s``), which
  :class:`~chute.callbacks.StallMonitor` sets apart from the rest of the time between steps.
- An evaluation loader over map-style data (workers, threads or the calling thread) records the dataset
  indices of each batch it hands out, in its ``batch_sampler``
  (:class:`~chute.loader.delivered.DeliveredIndices`), where Lightning's prediction writers read them.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, default_collate

from chute.loader.buffers import BatchArena
from chute.loader.distributed import current_rank
from chute.loader.orders import EvalBatches, IndexSampler, Order, SnapshotOrder
from chute.loader.seeding import Stream, derive_seed, enter_batch
from chute.loader.settings import LoaderSettings
from chute.loader.threaded import DeviceCopy, DeviceFeed, ThreadedLoader
from chute.loader.worker_init import WorkerInit, forking_workers
from chute.loader.workers import (
    GuardedIterator,
    InFlight,
    TrackedDataset,
    hold_worker_deaths,
    name_samples,
    stops_workers_when_collected,
)

if TYPE_CHECKING:
    from chute.bad_samples import LeftOut
    from chute.loader.delivered import DeliveredIndices


class BatchFetch(Dataset[Any]):
    """A view whose items are whole batches: ``view[[i, j, ...]]`` is the list of samples (or the
    dataset's own ``__getitems__`` result). Lets a batch-yielding sampler drive a DataLoader with
    ``batch_size=None``."""

    def __init__(self, dataset: Dataset[Any], seed: int | None = None) -> None:
        self.dataset = dataset
        self.seed = seed  # keys the batch generator (chute.loader.batch_generator) of each batch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, batch: Sequence[int]) -> Any:
        if self.seed is not None:
            enter_batch(self.seed, batch)
        getitems = getattr(self.dataset, "__getitems__", None)
        if callable(getitems):
            try:
                return getitems(batch)
            except Exception as err:
                name_samples(err, self.dataset, batch)
                raise
        samples = []
        for i in batch:
            try:
                samples.append(self.dataset[i])
            except Exception as err:
                name_samples(err, self.dataset, [i])
                raise
        return samples

    def reseed(self, seed: int) -> None:
        reseed = getattr(self.dataset, "reseed", None)
        if callable(reseed):
            reseed(seed)

    def __getattr__(self, name: str) -> Any:  # e.g. ``targets``, ``class_names`` of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class Batched(DistributedSampler):
    """Group an index sampler's indices into batches: the order of a loader over an index sampler
    (a :class:`~chute.loader.orders.DistributedDraw` of indices, which cuts its draw with ``batched``).

    ``set_epoch`` reaches the index sampler; ``resume(epoch, batches)`` skips ``batches`` whole batches.
    A :class:`~torch.utils.data.DistributedSampler` by type only (the index sampler splits the ranks):
    Lightning then leaves the loader as it is, instead of re-making it around a
    ``DistributedSamplerWrapper`` that would list one epoch and split it again.
    """

    def __init__(self, sampler: Any, batch_size: int, drop_last: bool) -> None:
        # DistributedSampler.__init__ needs a dataset and a process group; only its type is wanted.
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def resume(self, epoch: int, batches: int) -> None:
        self.sampler.resume(epoch, batches * self.batch_size)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        return self.sampler.batched(self.batch_size, self.drop_last)


class Passes:
    """What every chute loader does around its batches: epochs, position, resume, no empty batches.

    A mixin: the loader class provides ``order`` (see the module docstring) and ``_batches()``, an
    iterator over one pass's batches; ``epoch_of`` (optional) returns the trainer's current epoch.
    The one place that says which epoch a pass is: it tells the order and ``epoch_reader`` (a
    map-style dataset with ``set_epoch``, whose per-sample randomness is keyed by the epoch).
    An evaluation loader records the indices of each batch it hands out (``delivered``); where the
    dataset leaves bad samples out of its batches it offers a ``left_out`` record
    (:class:`~chute.bad_samples.LeftOut`), which says which indices a short batch still holds.

    ``waited_s``: seconds the consumer has spent inside ``next()`` on this loader's passes, all passes
    together: reading the batch (no workers), or waiting for workers, threads or Ray to hand it over,
    and the device copy a CUDA feed makes. A pass's start (workers forking) counts too.
    """

    epoch_of: Callable[[], int] | None
    waited_s: float
    _delivered: DeliveredIndices | None

    def _init_passes(
        self, epoch_of: Callable[[], int] | None, epoch_reader: Any = None, delivered: DeliveredIndices | None = None
    ) -> None:
        self._delivered = delivered  # records the indices of each batch handed out (evaluation loaders)
        self._left_out: LeftOut | None = getattr(epoch_reader, "left_out", None)  # samples the dataset left out
        self.epoch_of = epoch_of
        self.epoch_reader = epoch_reader if callable(getattr(epoch_reader, "set_epoch", None)) else None
        self._epoch = 0  # the epoch of the current (or last) pass
        self._handed = 0  # the order's batches this pass has handed out
        self._next_pass = 0  # the next pass's epoch when no trainer says
        self._pending: tuple[int, int] | None = None
        self.waited_s = 0.0

    @property
    def order(self) -> Order:
        raise NotImplementedError

    def _batches(self) -> Iterator[Any]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The epoch of the current pass and how many batches it has handed out (and, for an order
        over changing data, what its snapshot was: see ``snapshot_state`` in the module docstring)."""
        if self._pending is not None:  # restored, not started yet: the position is still the saved one
            state: dict[str, Any] = {"epoch": self._pending[0], "batches": self._pending[1]}
        else:
            state = {"epoch": self._epoch, "batches": self._handed}
        if isinstance(self.order, SnapshotOrder) and (saved := self.order.snapshot_state()) is not None:
            state["snapshot"] = saved
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next pass, if it is of ``state``'s epoch, continues after its ``batches``."""
        self._pending = (int(state["epoch"]), int(state["batches"]))
        if isinstance(self.order, SnapshotOrder) and state.get("snapshot") is not None:
            self.order.restore_snapshot(int(state["epoch"]), state["snapshot"])

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch`` (without a trainer; with one, the trainer's epoch wins)."""
        self._next_pass = int(epoch)

    def __iter__(self) -> Iterator[Any]:
        return self._pass()

    def _pass(self) -> Iterator[Any]:
        # A generator: nothing below runs until the first batch is asked for.
        pending, self._pending = self._pending, None
        if self.epoch_of is not None:
            epoch = int(self.epoch_of())
        else:
            epoch = pending[0] if pending is not None else self._next_pass
        self._next_pass = epoch + 1
        order = self.order
        if pending is not None:
            order.resume(*pending)
        order.set_epoch(epoch)  # a resume offset of another epoch is dropped here
        if self.epoch_reader is not None:  # per-sample randomness keyed by (seed, epoch, index)
            self.epoch_reader.set_epoch(epoch)
        self._epoch = epoch
        self._handed = pending[1] if pending is not None and pending[0] == epoch else 0
        delivered = self._delivered
        left_out = self._left_out if delivered is not None else None
        if delivered is not None:
            delivered.begin()  # before _batches(): workers start drawing from the order there
            if left_out is not None:
                left_out.begin()
        batches, clock = self._batches(), time.perf_counter
        while True:
            asked = clock()
            batch = next(batches, _END)
            self.waited_s += clock() - asked
            if batch is _END:
                return
            self._handed += 1
            rows = _rows(batch)
            if delivered is not None:
                delivered.delivered(batch, rows, left_out)
            if rows != 0:
                yield batch


_END = object()  # past a pass's last batch


def _rows(batch: Any) -> int | None:
    """How many samples a batch holds: 0 for ``None``, else the rows of its inputs (its first tensor or
    array, or the ``"inputs"`` entry of a dict; the GPU decode route's ``EncodedImages`` by its length);
    ``None`` where that has no rows."""
    if batch is None:
        return 0
    first = batch
    while isinstance(first, (tuple, list, dict)) and first:
        first = first.get("inputs", next(iter(first.values()))) if isinstance(first, dict) else first[0]
    if isinstance(first, (torch.Tensor, np.ndarray)):
        return int(first.shape[0]) if first.ndim > 0 else None
    rows = getattr(first, "batch_rows", None)
    return int(rows) if isinstance(rows, int) else None


class ChuteDataLoader(Passes, DataLoader[Any]):  # type: ignore[misc]
    """The torch DataLoader as chute runs it (worker processes, or the main process).

    Adds :class:`Passes` and, with workers, names the worker and the samples it was loading when a
    worker dies (:class:`~chute.loader.workers.GuardedIterator`).

    It never collates by itself (its order, or its stream, makes the batches): ``batch_sampler`` is not
    torch's but a :class:`~chute.loader.delivered.DeliveredIndices` (an evaluation loader's record of
    the indices it delivered, given as ``batch_sampler=``, the loader then following its order) or
    ``None``. Lightning re-makes a predict DataLoader with its own wrapper around that record as
    ``batch_sampler`` (and ``sampler=None``, ``batch_size=1``): the loader takes the record back out.
    """

    def __init__(
        self,
        *args: Any,
        epoch_of: Callable[[], int] | None = None,
        epoch_reader: Any = None,
        feed: DeviceCopy | None = None,
        batch_sampler: Any = None,
        **kwargs: Any,
    ) -> None:
        self._delivered = None
        if batch_sampler is not None:
            from chute.loader.delivered import recorder_in

            self._delivered = recorder_in(batch_sampler)
            if self._delivered is None:
                raise TypeError(
                    f"ChuteDataLoader follows an order of whole batches (sampler=), not a batch_sampler "
                    f"({type(batch_sampler).__name__}); pass the order as sampler= with batch_size=None"
                )
            kwargs.update(sampler=self._delivered.order, batch_size=None, drop_last=False, shuffle=None)
        super().__init__(*args, **kwargs)
        self._init_passes(epoch_of, epoch_reader, self._delivered)
        self.feed = feed  # with worker processes on a CUDA trainer: copy and hook in a thread (DeviceFeed)

    @property  # type: ignore[override]
    def batch_sampler(self) -> DeliveredIndices | None:
        return self._delivered

    @batch_sampler.setter
    def batch_sampler(self, value: Any) -> None:  # DataLoader.__init__ sets torch's, which is None here
        if value is not None:
            raise ValueError("a ChuteDataLoader's batch_sampler is its DeliveredIndices, given to __init__")

    @property
    def _auto_collation(self) -> bool:  # torch's reads batch_sampler, which is not torch's here
        return False

    @property
    def _index_sampler(self) -> Any:  # what torch draws from: the order, noted as drawn when recording
        return self.sampler if self._delivered is None else self._delivered.drawing()

    @property
    def order(self) -> Order:
        return cast(Order, self.dataset if isinstance(self.dataset, IterableDataset) else self.sampler)

    def _batches(self) -> Iterator[Any]:
        forks = self.num_workers > 0 and (self._iterator is None or not self.persistent_workers)
        if forks:
            iterator: Any = stops_workers_when_collected(self._fork_workers())
        else:
            iterator = DataLoader.__iter__(self)  # the persistent workers' next pass
        tracked = _tracked(self.dataset)
        if self.num_workers > 0 and tracked is not None:
            iterator = GuardedIterator(iterator, tracked)
        if self.feed is not None:
            return iter(DeviceFeed(iterator, self.feed))
        return iterator

    def _fork_workers(self) -> Any:
        """``DataLoader.__iter__``, which starts the workers, with chute's preparations around the fork:
        the parent's state (:func:`~chute.loader.worker_init.forking_workers`) and the shared memory the
        workers make their batches in (:class:`~chute.loader.buffers.BatchArena`), kept while the
        iterator that owns the workers lives."""
        hold_worker_deaths()  # a worker's death surfaces on the next batch, named (GuardedIterator)
        init = self.worker_init_fn if isinstance(self.worker_init_fn, WorkerInit) else None
        arena = BatchArena.for_workers(self.num_workers, self.multiprocessing_context) if init is not None else None
        if init is None or arena is None:
            with forking_workers():
                return DataLoader.__iter__(self)
        init.arena = arena
        try:
            with forking_workers(), arena.forking():
                iterator = DataLoader.__iter__(self)
        finally:
            init.arena = None  # the children have it; the next fork makes its own
        weakref.finalize(iterator, arena.retire)
        return iterator


class ChuteThreadedLoader(Passes, ThreadedLoader):
    """:class:`~chute.loader.threaded.ThreadedLoader` with :class:`Passes`; ``delivered``: records the
    indices of each batch handed out, offered as ``batch_sampler`` (as :class:`ChuteDataLoader` does)."""

    def __init__(
        self,
        *args: Any,
        epoch_of: Callable[[], int] | None = None,
        epoch_reader: Any = None,
        delivered: DeliveredIndices | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._init_passes(epoch_of, epoch_reader, delivered)
        self.batch_sampler = delivered

    @property
    def _index_sampler(self) -> Any:
        return self.sampler if self._delivered is None else self._delivered.drawing()

    @property
    def order(self) -> Order:
        return cast(Order, self.sampler)

    def _batches(self) -> Iterator[Any]:
        return ThreadedLoader.__iter__(self)


def _check_order(order: Any) -> None:
    """A :class:`~chute.loader.orders.Order`, or a ``TypeError`` naming what it lacks."""
    if not isinstance(order, Order):
        needed = ("set_epoch", "resume", "__len__", "__iter__")
        lacks = [name for name in needed if not callable(getattr(order, name, None))]
        raise TypeError(
            f"{type(order).__name__} cannot drive a chute loader: it has no {', '.join(lacks)} "
            "(see chute.loader.orders.Order; wrap a plain sampler of indices in chute.loader.Batched)"
        )


def _tracked(dataset: Any) -> TrackedDataset | None:
    for _ in range(3):
        if isinstance(dataset, TrackedDataset):
            return dataset
        dataset = getattr(dataset, "dataset", None)
    return None


Loader = ChuteDataLoader | ChuteThreadedLoader


def _device_feed(device: torch.device | None, after_copy: Callable[[Any], Any] | None) -> DeviceCopy | None:
    """With a CUDA device and a batch hook: the copy (and hook) a feeding thread runs on batches that
    other processes made (worker processes, Ray tasks), so the training thread gets finished ones."""
    if device is None or device.type != "cuda" or after_copy is None:
        return None
    return DeviceCopy(device, after=after_copy)


def default_order(
    size: int,
    settings: LoaderSettings,
    *,
    train: bool,
    seed: int,
    eval_order: Any = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> Any:
    """Training: a ``(seed, epoch)`` permutation (if ``settings.shuffle``) split across ranks and cut
    into batches; evaluation: ``eval_order`` (default ``0..n-1``), each sample once across ranks
    (:class:`~chute.loader.orders.EvalBatches`). ``rank``/``world_size``: default torch.distributed's."""
    if not train:
        order = size if eval_order is None else eval_order
        return EvalBatches(order, settings.batch_size_for(False), rank=rank, world_size=world_size)
    sampler = IndexSampler(
        size, shuffle=settings.shuffle, seed=derive_seed(seed, Stream.ORDER), rank=rank, world_size=world_size
    )
    return Batched(sampler, settings.batch_size, settings.drop_last)


def build_loader(
    dataset: Dataset[Any],
    settings: LoaderSettings,
    *,
    train: bool,
    seed: int,
    batches: Any = None,
    collate_fn: Callable[[Any], Any] | None = None,
    rank: int | None = None,
    device: torch.device | None = None,
    epoch_of: Callable[[], int] | None = None,
    after_copy: Callable[[Any], Any] | None = None,
) -> Loader:
    """The loader of ``dataset`` as ``settings`` say; the only place chute makes one.

    Args:
        dataset: A map-style dataset, read in the batches of ``batches``; or a stream (an iterable
            dataset that yields whole batches itself, with ``set_epoch``/``resume``).
        settings: Backend, workers, pinning, prefetch, timeouts (:class:`LoaderSettings`).
        train: Training (the loader's batch size, ``drop_last``) or evaluation.
        seed: The run's seed: worker seeds and the loader's generator derive from it alone.
        batches: The order: a sampler of index batches with ``set_epoch``/``resume``
            (:class:`~chute.loader.orders.DistributedDraw` subclasses, or :class:`Batched`); default
            :func:`default_order`.
        collate_fn: Applied to each batch's samples (or to what the dataset's ``__getitems__`` returned).
        rank: This process's rank, mixed into worker seeds (default: :func:`current_rank`).
        device: A CUDA device the loader delivers batches to, copied on a side stream: by its threads
            (threads backend, through reused pinned buffers), or with worker processes and
            ``after_copy`` by one feeding thread (:class:`~chute.loader.threaded.DeviceFeed`).
        epoch_of: Returns the trainer's current epoch; each pass is that epoch (else the pass count),
            told to the order and to a map-style ``dataset`` with ``set_epoch``.
        after_copy: With ``device`` and loader threads or worker processes: applied to each batch on the device,
            in the loader thread (a DataModule's batch hook; see ``ThreadedLoader``).
    """
    stream = isinstance(dataset, IterableDataset)
    batch_seed = derive_seed(seed, Stream.TRAIN_BATCHES if train else Stream.EVAL_BATCHES)
    if not stream and batches is None:
        batches = default_order(len(dataset), settings, train=train, seed=seed)  # type: ignore[arg-type]
    _check_order(dataset if stream else batches)
    if not stream and collate_fn is None:  # a DataLoader without batch_size would only convert, not collate
        collate_fn = default_collate
    delivered = None
    if not train and not stream and settings.backend in ("torch", "threads"):
        from chute.loader.delivered import delivered_indices  # imports Lightning: only when evaluating

        delivered = delivered_indices(batches)
    if settings.backend == "threads":
        if stream:
            raise ValueError("the threads backend reads map-style data; a stream needs backend=torch")
        return ChuteThreadedLoader(
            dataset, batches, collate_fn, fetch=BatchFetch(dataset, batch_seed).__getitem__,
            prefetch=settings.prefetch_factor or 2, threads=settings.num_workers,
            pin_memory=settings.resolved_pin_memory, timeout=settings.timeout,
            device=device, epoch_of=epoch_of, epoch_reader=dataset, after_copy=after_copy, delivered=delivered,
        )  # fmt: skip
    if settings.on_ray:
        engine = "data" if settings.backend == "ray_data" else "tasks"
        if stream:
            from chute.integrations.ray_streams import RayStreamLoader

            return RayStreamLoader(  # type: ignore[return-value]  # a Passes loader, as the two in Loader
                dataset, collate_fn, tasks=None if settings.auto else settings.num_workers, engine=engine,  # type: ignore[arg-type]
                prefetch=settings.prefetch_factor or 2, pin_memory=settings.resolved_pin_memory,
                feed=_device_feed(device, after_copy), epoch_of=epoch_of,
            )  # fmt: skip
        from chute.integrations.ray_tasks import RayLoader

        return RayLoader(  # type: ignore[return-value]  # a Passes loader, as the two in Loader
            dataset, batches, collate_fn, seed=batch_seed, tasks=None if settings.auto else settings.num_workers,
            engine=engine,
            prefetch=settings.prefetch_factor or 2, pin_memory=settings.resolved_pin_memory,
            feed=_device_feed(device, after_copy),
            epoch_of=epoch_of, epoch_reader=dataset,
        )  # fmt: skip
    workers = settings.num_workers
    kwargs: dict[str, Any] = {
        "batch_size": None,  # the order (or the stream) makes the batches
        "num_workers": workers,
        "pin_memory": settings.resolved_pin_memory,
        "collate_fn": collate_fn,
        "generator": torch.Generator().manual_seed(
            derive_seed(seed, Stream.TRAIN_WORKERS if train else Stream.EVAL_WORKERS)
        ),
        "epoch_of": epoch_of,
    }
    if workers > 0:
        kwargs["persistent_workers"] = settings.resolved_persistent_workers
        kwargs["timeout"] = settings.timeout
        if settings.prefetch_factor is not None:
            kwargs["prefetch_factor"] = settings.prefetch_factor
        if settings.multiprocessing_context is not None:
            kwargs["multiprocessing_context"] = settings.multiprocessing_context
        # one thread per library in each worker (chute.loader.worker_init), then the worker's seeds
        kwargs["worker_init_fn"] = WorkerInit(current_rank() if rank is None else rank, seed=settings.seed_workers)
    if workers > 0:
        kwargs["feed"] = _device_feed(device, after_copy)
    if stream:
        return ChuteDataLoader(dataset, **kwargs)
    kwargs["epoch_reader"] = dataset
    if workers > 0:  # name the samples in flight if a worker dies
        size = max(int(getattr(batches, "batch_size", 1) or 1), 1)
        dataset = TrackedDataset(dataset, InFlight(workers, size))
    if delivered is not None:  # the loader follows the order inside it (see ChuteDataLoader)
        return ChuteDataLoader(BatchFetch(dataset, batch_seed), batch_sampler=delivered, **kwargs)
    return ChuteDataLoader(BatchFetch(dataset, batch_seed), sampler=batches, **kwargs)
