"""DataLoader settings shared by every DataModule, and the one place DataLoaders are built."""

from __future__ import annotations

import os
import random
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from chute.errors import ConfigError

_MP_CONTEXTS = (None, "fork", "spawn", "forkserver")


@dataclass
class LoaderSettings:
    """Every DataLoader knob, checked once, in one object.

    ``None`` means "pick for me": ``pin_memory`` turns on when CUDA is available,
    ``persistent_workers`` when there are workers, ``prefetch_factor`` takes torch's default (2).

    Args:
        batch_size: Samples per training batch.
        eval_batch_size: Samples per validation/test/predict batch (default: ``batch_size``).
        num_workers: Worker processes; 0 loads in the main process; ``"auto"`` probes candidates
            (and prefetch depths) for a few seconds when the training loader is built and keeps the
            fastest (see :mod:`chute.autotune`).
        pin_memory: Page-lock host batches so copies to the GPU are asynchronous.
        prefetch_factor: Batches each worker loads ahead (needs ``num_workers > 0``).
        persistent_workers: Keep workers alive between epochs (needs ``num_workers > 0``).
        drop_last: Drop the last incomplete training batch.
        shuffle: Shuffle the training set each epoch.
        timeout: Seconds to wait for a batch from a worker before raising (0 waits forever).
        seed_workers: Seed Python, NumPy, torch and the transforms in each worker from the run's
            seed, the epoch, the worker id and the rank, so augmentations differ across workers and
            epochs and a run is reproducible from its seed.
        multiprocessing_context: ``fork``, ``spawn`` or ``forkserver`` (default: the platform's).
        backend: ``torch`` (the DataLoader) or ``threads``: a :class:`~chute.threaded.ThreadedLoader`
            that gathers whole batches in ``num_workers`` background threads of this process (0:
            in the calling thread), for work that releases the GIL (crop-decoding JPEGs, gathers
            from precomputed arrays, tables) where worker IPC costs more than it saves. With
            ``num_workers=auto`` both backends are probed and the faster one is kept.

    Example:
        >>> LoaderSettings(batch_size=128, num_workers=4).pin_memory in (True, False)
        True
        >>> LoaderSettings(num_workers=0, prefetch_factor=4)
        Traceback (most recent call last):
        ...
        chute.errors.ConfigError: prefetch_factor=4: only applies with worker processes; set num_workers > 0 \
or leave prefetch_factor unset (null)
    """

    batch_size: int = 64
    eval_batch_size: int | None = None
    num_workers: Any = 0  # an int, or "auto"
    pin_memory: bool | None = None
    prefetch_factor: int | None = None
    persistent_workers: bool | None = None
    drop_last: bool = False
    shuffle: bool = True
    timeout: float = 0.0
    seed_workers: bool = True
    multiprocessing_context: str | None = None
    backend: str = "torch"

    def __post_init__(self) -> None:
        _check_int(self, "batch_size", minimum=1)
        if self.eval_batch_size is not None:
            _check_int(self, "eval_batch_size", minimum=1)
        if self.auto:
            if self.prefetch_factor is not None:
                raise ConfigError(
                    "prefetch_factor", self.prefetch_factor, "is tuned too with num_workers=auto; leave it null"
                )
        else:
            _check_int(self, "num_workers", minimum=0, hint="0 loads in the main process, or 'auto'")
        if self.prefetch_factor is not None:
            _check_int(self, "prefetch_factor", minimum=1)
            if self.num_workers == 0:
                raise ConfigError(
                    "prefetch_factor",
                    self.prefetch_factor,
                    "only applies with worker processes; set num_workers > 0 or leave prefetch_factor unset (null)",
                )
        if self.persistent_workers and (self.num_workers == 0 or self.backend == "threads") and not self.auto:
            raise ConfigError(
                "persistent_workers",
                self.persistent_workers,
                "needs worker processes (backend=torch, num_workers > 0); threads are started each epoch "
                "at no cost. Set persistent_workers=false or null",
            )
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)) or self.timeout < 0:
            raise ConfigError("timeout", self.timeout, "must be a number of seconds >= 0 (0 waits forever)")
        if self.timeout > 0 and self.num_workers == 0 and not self.auto:
            raise ConfigError("timeout", self.timeout, "only applies with worker processes; set num_workers > 0")
        if self.backend not in ("torch", "threads"):
            raise ConfigError("backend", self.backend, "must be 'torch' or 'threads'")
        if self.backend == "threads" and self.multiprocessing_context is not None:
            raise ConfigError(
                "multiprocessing_context", self.multiprocessing_context, "has no effect with backend=threads"
            )
        if self.multiprocessing_context not in _MP_CONTEXTS:
            raise ConfigError(
                "multiprocessing_context", self.multiprocessing_context, f"must be one of {list(_MP_CONTEXTS)}"
            )

    @property
    def auto(self) -> bool:
        """Whether ``num_workers`` (and the prefetch depth) are left to the autotuner."""
        return self.num_workers == "auto"

    @property
    def resolved_pin_memory(self) -> bool:
        return torch.cuda.is_available() if self.pin_memory is None else self.pin_memory

    @property
    def resolved_persistent_workers(self) -> bool:
        if self.persistent_workers is None:
            return not self.auto and self.num_workers > 0
        return self.persistent_workers

    def batch_size_for(self, train: bool) -> int:
        if train or self.eval_batch_size is None:
            return self.batch_size
        return self.eval_batch_size


def _check_int(settings: LoaderSettings, key: str, minimum: int, hint: str = "") -> None:
    value = getattr(settings, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        reason = f"must be an integer >= {minimum}" + (f" ({hint})" if hint else "")
        raise ConfigError(key, value, reason)


class WorkerSeeder:
    """``worker_init_fn`` that gives every (rank, epoch, worker) its own reproducible random streams.

    torch already seeds each worker's torch generator with ``base_seed + worker_id``, where
    ``base_seed`` is drawn from the DataLoader's generator once per epoch (or once, with persistent
    workers). Python's ``random`` and NumPy are not reseeded, so forked workers would share their
    state, and ranks would share everything. This mixes the rank in, seeds all three, and reseeds
    the dataset's transform (albumentations keeps its own generators) via ``dataset.reseed(seed)``.
    """

    def __init__(self, rank: int = 0) -> None:
        self.rank = rank

    def __call__(self, worker_id: int) -> None:
        info = torch.utils.data.get_worker_info()
        seed = derive_seed(torch.initial_seed(), self.rank)
        seed_everything_local(seed)
        dataset = info.dataset if info is not None else None
        reseed = getattr(dataset, "reseed", None)
        if callable(reseed):
            reseed(seed)


def derive_seed(*parts: int) -> int:
    """A 32-bit seed mixed from any number of non-negative integers (order matters)."""
    entropy = [int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint32)[0])


_MASK64 = (1 << 64) - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit seed for one sample's augmentation, mixed from ``(seed, epoch, index)``.

    Randomness keyed by the sample, not by the process that happens to load it, makes batches the
    same whatever ``num_workers`` (or threads) load them. SplitMix64's finalizer over a linear
    combination: about a microsecond, against tens for ``np.random.SeedSequence``.

    Example:
        >>> sample_seed(0, 1, 2) == sample_seed(0, 1, 2) != sample_seed(0, 2, 2)
        True
    """
    x = (seed * 0x9E3779B97F4A7C15 + (epoch + 1) * 0xD1B54A32D192ED03 + (index + 1) * 0x8CB92BA72F3D8DD7) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def seeded_call(transform: Callable[[Any], Any], sample: Any, key: int) -> Any:
    """``transform(sample)`` with every generator it may use seeded from ``key`` (:func:`sample_seed`).

    torchvision v2 draws from torch's global generator; albumentations and chute's crop-aware
    transforms from their own (``reseed``). In a DataLoader worker the global state is the worker's
    own; in the main process (``num_workers=0``, or loader threads, which take turns here) it is
    restored afterwards, so the model's randomness is untouched.
    """
    seed = key & 0x7FFF_FFFF_FFFF_FFFF
    reseed = getattr(transform, "reseed", None)
    if torch.utils.data.get_worker_info() is not None:
        torch.manual_seed(seed)
        if callable(reseed):
            reseed(seed & 0xFFFF_FFFF)
        return transform(sample)
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if callable(reseed):
            reseed(seed & 0xFFFF_FFFF)
        return transform(sample)


_GLOBAL_RNG = threading.Lock()  # torch's global generator is one per process


class SharedEpoch:
    """The current epoch in a shared-memory integer: set in the main process, read in workers.

    Persistent DataLoader workers keep their own copy of the dataset, so a plain attribute set in
    the main process would never reach them; this one does (forked or spawned alike).
    """

    def __init__(self, epoch: int = 0) -> None:
        self._value = torch.full((1,), int(epoch), dtype=torch.int64).share_memory_()

    def set(self, epoch: int) -> None:
        self._value[0] = int(epoch)

    def get(self) -> int:
        return int(self._value[0])


def seed_everything_local(seed: int) -> None:
    """Seed Python, NumPy and torch in this process (no environment variables, no logging)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def world_position(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)``: the one rule every chute sampler, stream and worker seeder uses.

    Given values win; then torch.distributed when initialised; then the launcher's environment
    (``RANK``/``WORLD_SIZE`` from torchrun and Lightning, ``SLURM_PROCID``/``SLURM_NTASKS`` under
    srun), which also answers in spawned DataLoader workers, where no process group exists; else
    ``(0, 1)``.
    """
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        found = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        env = os.environ
        found = (
            int(env.get("RANK", env.get("SLURM_PROCID", 0))),
            int(env.get("WORLD_SIZE", env.get("SLURM_NTASKS", 1))),
        )
    return (found[0] if rank is None else rank), (found[1] if world_size is None else world_size)


def current_rank() -> int:
    """Global rank of this process (:func:`world_position`)."""
    return world_position()[0]


class BatchFetch(Dataset[Any]):
    """A view whose items are whole batches: ``view[[i, j, ...]]`` is the list of samples (or the
    dataset's own ``__getitems__`` result). Lets a batch-yielding sampler drive a DataLoader with
    ``batch_size=None``."""

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, batch: Sequence[int]) -> Any:
        getitems = getattr(self.dataset, "__getitems__", None)
        if callable(getitems):
            return getitems(batch)
        return [self.dataset[i] for i in batch]

    def reseed(self, seed: int) -> None:
        reseed = getattr(self.dataset, "reseed", None)
        if callable(reseed):
            reseed(seed)

    def __getattr__(self, name: str) -> Any:  # e.g. ``targets``, ``class_names`` of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class InFlight:
    """Which samples each DataLoader worker is loading, in shared memory, so the main process can
    name them when a worker dies (killed, out of memory, or crashing in native code).

    Row ``w`` holds worker ``w``'s current samples: ``[count, index, index, ...]`` (at most
    ``capacity`` indices), ``count = -1`` when idle.
    """

    def __init__(self, workers: int, capacity: int) -> None:
        self.capacity = max(int(capacity), 1)
        self.table = torch.full((max(workers, 1), self.capacity + 1), -1, dtype=torch.int64).share_memory_()

    def mark(self, indices: Sequence[Any]) -> None:
        info = torch.utils.data.get_worker_info()
        if info is None:
            return
        row = self.table[info.id]
        head = [int(i) for i in list(indices)[: self.capacity]]
        row[1 : len(head) + 1] = torch.tensor(head, dtype=torch.int64)
        row[0] = len(indices)

    def clear(self) -> None:
        info = torch.utils.data.get_worker_info()
        if info is not None:
            self.table[info.id, 0] = -1

    def samples(self, worker: int) -> tuple[list[int], int] | None:
        """``(first indices, count)`` worker ``worker`` was loading, or ``None`` if it was idle."""
        count = int(self.table[worker, 0])
        if count < 0:
            return None
        return self.table[worker, 1 : min(count, self.capacity) + 1].tolist(), count


class TrackedDataset(Dataset[Any]):
    """A view of ``dataset`` that records in :class:`InFlight` what each worker is loading.

    Per-sample datasets are tracked sample by sample (the error names the exact sample); datasets
    that gather whole batches (``__getitems__``) are tracked by batch. Other attributes
    (``targets``, ``set_epoch``, ``reseed``, ...) are the wrapped dataset's.
    """

    def __init__(self, dataset: Dataset[Any], in_flight: InFlight) -> None:
        self.dataset = dataset
        self.in_flight = in_flight

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: Any) -> Any:
        self.in_flight.mark(item if isinstance(item, (list, tuple)) else [item])
        out = self.dataset[item]
        self.in_flight.clear()
        return out

    def __getitems__(self, indices: Sequence[Any]) -> Any:
        getitems = getattr(self.dataset, "__getitems__", None)
        if callable(getitems):
            self.in_flight.mark(indices)
            out = getitems(indices)
        else:
            out = []
            for i in indices:
                self.in_flight.mark([i])
                out.append(self.dataset[i])
        self.in_flight.clear()
        return out

    def describe(self, index: int) -> str:
        """The sample's file or row where the dataset can say (``describe`` or an ``index.path``)."""
        inner: Any = self.dataset
        for _ in range(3):  # through views such as BatchFetch
            describe = getattr(inner, "describe", None)
            if callable(describe):
                return str(describe(index))
            path = getattr(getattr(inner, "index", None), "path", None)
            if callable(path):
                return str(path(index))
            inner = getattr(inner, "dataset", None)
            if inner is None:
                break
        return f"sample {index}"

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "in_flight"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


class WorkerDiedError(RuntimeError):
    """A DataLoader worker process ended without returning its batch; the message names the samples."""


class GuardedDataLoader(DataLoader[Any]):
    """A DataLoader whose worker deaths name the worker and the samples it was loading.

    torch notices a dead worker within seconds (``SIGCHLD`` and a liveness check on every queue
    wait) and raises ``DataLoader worker (pid N) ...``; this adds which worker that was and what it
    was loading (from the :class:`TrackedDataset`'s :class:`InFlight` table).
    """

    def __iter__(self) -> Any:
        iterator = super().__iter__()
        if self.num_workers == 0 or not isinstance(self.dataset, TrackedDataset):
            return iterator
        return _Guard(iterator, self.dataset)


class _Guard:
    def __init__(self, iterator: Any, dataset: TrackedDataset) -> None:
        self.iterator, self.dataset = iterator, dataset

    def __iter__(self) -> _Guard:
        return self

    def __len__(self) -> int:
        return len(self.iterator)

    def __next__(self) -> Any:
        try:
            return next(self.iterator)
        except RuntimeError as err:
            if "DataLoader worker" not in str(err):
                raise
            raise WorkerDiedError(self._explain(str(err))) from err

    def _explain(self, message: str) -> str:
        pids = {int(p) for p in re.findall(r"\d+", message.split("pid", 1)[1])} if "pid" in message else set()
        workers = getattr(self.iterator, "_workers", [])
        dead = [w for w, process in enumerate(workers) if process.pid in pids] or list(range(len(workers)))
        lines = [message.rstrip(".") + "."]
        for w in dead:
            loading = self.dataset.in_flight.samples(w)
            if loading is None:
                continue
            head, count = loading
            pid = workers[w].pid if w < len(workers) else "?"
            first = self.dataset.describe(head[0]) if head and not isinstance(self.dataset.dataset, BatchFetch) else ""
            where = f"sample {head[0]} ({first})" if count == 1 and first else f"{count} samples {head[:8]}"
            lines.append(f"Worker {w} (pid {pid}) was loading {where}.")
        lines.append(
            "A worker dies when it is killed (e.g. out of memory: fewer loader.num_workers or a smaller "
            "loader.batch_size) or crashes in native code (e.g. a decoder on a corrupt file)."
        )
        return " ".join(lines)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.iterator, name)


class EpochDataLoader(GuardedDataLoader):
    """A DataLoader that tells its dataset the epoch (``dataset.set_epoch``) when each pass starts.

    Lightning calls ``set_epoch`` on samplers only; an iterable dataset has none, so without this
    it would shuffle the same way every epoch. Passes are counted; ``set_epoch`` here pins the
    next pass's epoch (e.g. when resuming).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._next_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self._next_epoch = int(epoch)

    def __iter__(self) -> Any:
        self.dataset.set_epoch(self._next_epoch)  # type: ignore[attr-defined]
        self._next_epoch += 1
        return super().__iter__()


def build_dataloader(
    dataset: Dataset[Any],
    settings: LoaderSettings,
    *,
    train: bool,
    seed: int,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    sampler: Sampler[Any] | None = None,
    batch_sampler: Sampler[Any] | None = None,
    rank: int | None = None,
    dataset_batches: bool = False,
) -> DataLoader[Any]:
    """Build a DataLoader from ``settings``; the only place chute calls ``DataLoader(...)``.

    The loader owns a generator seeded from ``seed``, so shuffling and per-epoch worker seeds
    depend on the run's seed alone, not on how much global randomness model code consumed. A
    A ``batch_sampler`` (one that yields index batches, e.g. length bucketing) replaces
    ``batch_size``, ``shuffle`` and ``drop_last``; it drives the loader as its ``sampler``, over a
    :class:`BatchFetch` view, so Lightning sees (and does not re-wrap) chute's distributed samplers.
    With ``dataset_batches`` the dataset yields whole batches itself (an iterable stream); if it has
    ``set_epoch``, the loader calls it at the start of every pass (:class:`EpochDataLoader`).
    """
    workers = settings.num_workers
    generator = torch.Generator().manual_seed(derive_seed(seed, 0 if train else 1))
    kwargs: dict[str, Any] = {
        "batch_size": settings.batch_size_for(train),
        "num_workers": workers,
        "pin_memory": settings.resolved_pin_memory,
        "drop_last": settings.drop_last if train else False,
        "collate_fn": collate_fn,
        "generator": generator,
    }
    if dataset_batches:
        kwargs.update(batch_size=None, drop_last=False)
    elif batch_sampler is not None:  # yields whole batches: drive the loader as its sampler
        dataset = BatchFetch(dataset)
        kwargs.update(batch_size=None, drop_last=False, sampler=batch_sampler)
    elif sampler is not None:
        kwargs["sampler"] = sampler
    else:
        kwargs["shuffle"] = settings.shuffle if train else False
    if workers > 0:
        kwargs["persistent_workers"] = settings.resolved_persistent_workers
        kwargs["timeout"] = settings.timeout
        if settings.prefetch_factor is not None:
            kwargs["prefetch_factor"] = settings.prefetch_factor
        if settings.multiprocessing_context is not None:
            kwargs["multiprocessing_context"] = settings.multiprocessing_context
        if settings.seed_workers:
            kwargs["worker_init_fn"] = WorkerSeeder(current_rank() if rank is None else rank)
    if dataset_batches and callable(getattr(dataset, "set_epoch", None)):
        return EpochDataLoader(dataset, **kwargs)
    if workers > 0:  # name the samples in flight if a worker dies
        size = kwargs["batch_size"] or (getattr(kwargs.get("sampler"), "batch_size", None) or 1)
        dataset = TrackedDataset(dataset, InFlight(workers, max(int(size), 1)))
        return GuardedDataLoader(dataset, **kwargs)
    return DataLoader(dataset, **kwargs)
