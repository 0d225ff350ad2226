"""Reading on a Ray cluster: chute's loader with Ray tasks doing the reading (``loader.backend=ray``).

The order, the split across ranks, the epoch and the position stay chute's (:class:`RayLoader` is a
:class:`~chute.loader.Passes` over the same :class:`~chute.loader.orders.Order` every other backend
follows). What moves to the cluster is the work between an index batch and a collated batch: each
pass lists this rank's remaining index batches and runs one Ray task per batch on the cluster's CPU
workers, which reads, decodes, transforms and collates it with the same code a DataLoader worker
runs (:class:`~chute.loader.BatchFetch` and the DataModule's collate function, the batch hook
included on a CPU trainer). At most ``tasks + prefetch`` batches are in flight or waiting, and they
are handed out in the order's order. So every guarantee of the core holds unchanged:

- each sample once per epoch across ranks, equal steps: the order is chute's (each rank hands its own
  share of the seeded draw to Ray), not a dynamic split such as Ray Data's ``streaming_split``, whose
  division of rows between consumers depends on timing;
- the same batches as worker processes or threads: per-sample and per-batch randomness is keyed by
  ``(seed, epoch, index)`` and the batch's indices, not by the process that runs it;
- mid-epoch resume is exact: the position is the loader's; a resumed pass hands Ray only the batches
  left;
- a bad file is named (the :class:`~chute.errors.DataError` raised on the cluster comes back as
  that batch and is raised here, as it was), or with ``on_error=skip`` skipped and counted in this
  process's counts (each batch brings back what its reading skipped).

Two engines run the same reading. ``tasks`` (``loader.backend=ray``, the default): one Ray task per
batch in a window chute keeps. ``data`` (``loader.backend=ray_data``): a Ray Data pipeline, one row
per batch of this rank's share (``ray.data.range``, ``map_batches`` on the cluster's CPU workers with
the order preserved, streamed back by ``iter_batches``): each rank's own pipeline in the place of
``streaming_split``, for clusters whose Ray Data settings (backpressure, resource budgets, autoscaling)
users already tune. Tasks are the default because they measured faster here (Ray 2.60, the 2-core
machine, 2026-12-05): with one chute batch per row, ``map_batches`` under Ray Data's default
backpressure ran one task at a time (40 tasks of 0.1 s took 4.4-4.7 s; its concurrency-cap and
resource-budget policies each did it alone), and with those policies off it ran ahead of a slow
consumer by 50 of 60 batches, i.e. buffered the epoch in the object store. The same 40 tasks as
plain Ray tasks took 2.06 s. ``scripts/bench_ray.py --engine tasks data`` measures both. Ray Data's
own readers (``read_images``, ``read_parquet``) would read in Ray's order, not chute's. Shard
streams plan their batches as line positions and are read here too, one batch a task or row
(:mod:`chute.integrations.ray_streams`).

Where Ray runs: with ``RAY_ADDRESS`` set (``ray job submit`` sets it) or an ``address`` given, the
cluster there (its workers must be able to import chute and the data's paths must be readable from
every node); otherwise a local Ray instance this process starts, which under DDP rank 0 starts and
every other rank joins (:func:`connect`). Ray is an optional dependency (``pip install 'chute[ray]'``),
imported when first used. Measured against chute's own workers in ``scripts/bench_ray.py``
(``docs/benchmarks.md``).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from lightning_utilities.core.apply_func import apply_to_collection

from chute.bad_samples import BadSamples
from chute.errors import ConfigError, DataError
from chute.loader.build import BatchFetch, Passes
from chute.loader.distributed import from_rank_zero, world_position
from chute.loader.orders import Order
from chute.loader.threaded import DeviceCopy, DeviceFeed

log = logging.getLogger(__name__)

INSTALL = "pip install 'chute[ray]'"


def import_ray() -> Any:
    """``ray``, or a :class:`~chute.errors.ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError as err:
        raise ConfigError("loader.backend", "ray", f"needs Ray, which is not installed: {INSTALL}") from err
    return ray


def import_ray_data() -> Any:
    """``ray.data``, or a :class:`~chute.errors.ConfigError` naming what is missing (Ray Data needs
    Ray's ``[data]`` extra: pandas, pyarrow)."""
    import_ray()
    try:
        import ray.data as ray_data
    except ImportError as err:
        raise ConfigError(
            "loader.backend", "ray_data", f"needs Ray Data, which cannot be imported ({err}): {INSTALL}"
        ) from err
    return ray_data


_CONNECT = threading.Lock()
_AUTH = "RAY_AUTH_MODE"


def connect(address: str | None = None, num_cpus: int | None = None) -> str:
    """Join a Ray cluster (once per process) and return its address.

    ``address``: a running cluster (``"auto"``: the one ``ray start`` started on this machine, or
    ``RAY_ADDRESS``; ``"ray://host:10001"``: a remote one through Ray Client). ``None``: the one in
    ``RAY_ADDRESS`` if set, else a local instance started here with ``num_cpus`` CPUs (default: all);
    under DDP rank 0 starts it and the other ranks join it, so the job shares one cluster.
    """
    ray = import_ray()
    with _CONNECT:
        if not ray.is_initialized():
            if address is None:
                address = os.environ.get("RAY_ADDRESS") or None
            if address is None and world_position()[1] > 1:
                address, auth = from_rank_zero(lambda: (_start_local(ray, num_cpus), os.environ.get(_AUTH)))
                if auth is not None and not os.environ.get(_AUTH):
                    _join_auth(ray, auth)
            if address is None:
                _start_local(ray, num_cpus)
            elif not ray.is_initialized():  # rank 0 has just started it
                _init(ray, address=address)
        return str(ray.get_runtime_context().gcs_address)


def _join_auth(ray: Any, mode: str) -> None:
    """Check tokens as the cluster rank 0 started does (a new local Ray checks one by default since
    Ray 2.52; the token is the one in ``~/.ray``, which ranks on one machine share). Ray reads the
    mode from the environment into a cached config, which is read again here."""
    os.environ[_AUTH] = mode
    with contextlib.suppress(AttributeError):  # a Ray without that cache
        ray._raylet.Config.initialize("")


def _start_local(ray: Any, num_cpus: int | None) -> str:
    if not ray.is_initialized():
        # Each DDP rank is its own Ray job with its own worker processes; past the soft limit (one
        # worker per CPU) Ray kills idle ones, and the next pass starts them again (each imports
        # torch: 3 ranks on 2 CPUs took 62 s for what 28 s does with room for every rank's workers).
        cpus = num_cpus or os.cpu_count() or 1
        limit = {"num_workers_soft_limit": cpus * max(world_position()[1], 1)}
        # "local": a new instance even where `ray start` left one on this machine (Ray would join that
        # one, the latest in its temp folder, and refuse the _system_config of a new one)
        _init(ray, address="local", num_cpus=num_cpus, _system_config=limit)
        log.info("Started a local Ray instance with %s CPUs", ray.cluster_resources().get("CPU"))
    return str(ray.get_runtime_context().gcs_address)


def _init(ray: Any, **kwargs: Any) -> None:
    own = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kwargs)
    except ConnectionError as err:
        where = kwargs.get("address")
        raise ConfigError(
            "address", where, f"no Ray cluster answers there ({err}); start one (`ray start --head`) or leave it null"
        ) from err
    finally:
        _give_back_sigterm(own)


def _give_back_sigterm(own: Any) -> None:
    """Put this process's SIGTERM handler back after ``ray.init`` took the signal: a Python handler
    that exits at once (``sys.exit(15)``) and, at the C level, its core worker's crash handler (a
    stack dump, then the process killed). A Lightning fit's handler (stop between steps, save
    ``last.ckpt``, exit 143) never ran: no checkpoint of the last steps, no metrics. A handler is
    set from the main thread only (Python's rule); ``own`` is ``None`` where Python did not set it.
    """
    if own is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, own)


class RayLoader(Passes):
    """A chute loader whose batches are read by Ray tasks on a cluster (see the module docstring).

    Args:
        dataset: A map-style dataset (what a DataLoader worker would read); sent to the cluster once
            per pass, with the pass's epoch set.
        sampler: The order (:class:`~chute.loader.orders.Order` of index batches).
        collate_fn: Applied on the cluster to each batch's samples.
        seed: Keys each batch's generator (:func:`chute.loader.batch_generator`), as in
            :class:`~chute.loader.BatchFetch`.
        tasks: Ray tasks reading at once (``None``: one per CPU of the cluster).
        engine: ``tasks`` (one Ray task per batch) or ``data`` (a Ray Data pipeline); see the module
            docstring.
        prefetch: Batches read ahead of the consumer, besides one per task.
        pin_memory: Pin the batches here (only useful with CUDA).
        feed: With a CUDA trainer: copy each batch to the device and run the batch hook there in a
            feeding thread (:class:`~chute.loader.threaded.DeviceFeed`), as for worker processes.
        epoch_of, epoch_reader: As for :class:`~chute.loader.Passes`.
    """

    def __init__(
        self,
        dataset: Any,
        sampler: Order,
        collate_fn: Callable[[Any], Any] | None,
        *,
        seed: int,
        tasks: int | None = None,
        engine: str = "tasks",
        prefetch: int = 2,
        pin_memory: bool = False,
        feed: DeviceCopy | None = None,
        epoch_of: Callable[[], int] | None = None,
        epoch_reader: Any = None,
    ) -> None:
        self.dataset = dataset
        self.sampler = sampler
        self.collate_fn = collate_fn
        self.seed = seed
        self.tasks = tasks
        if engine not in ("tasks", "data"):
            raise ValueError(f"engine must be 'tasks' or 'data', not {engine!r}")
        self.engine = engine
        if engine == "data":
            import_ray_data()  # missing pieces named now, not at the first batch
        self.prefetch = prefetch
        self.pin_memory = pin_memory
        self.feed = feed
        # What Lightning and torch tooling read off a loader, as ThreadedLoader has them.
        self.num_workers = 0
        self.batch_sampler = None
        self.batch_size = getattr(sampler, "batch_size", None)
        self.drop_last = bool(getattr(sampler, "drop_last", False))
        self._init_passes(epoch_of, epoch_reader)

    @property
    def order(self) -> Order:
        return self.sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def _batches(self) -> Iterator[Any]:
        # Joined here, in the thread that iterates the loader, not in the feeding thread that runs
        # _read: a local instance's processes are killed when the thread that started them ends
        # (Ray starts them with PR_SET_PDEATHSIG), and a feeding thread ends with its pass.
        connect()  # joined already if the DataModule was given an address; else RAY_ADDRESS or a local one
        batches = self._read()
        return iter(DeviceFeed(batches, self.feed)) if self.feed is not None else batches

    def _plan(self) -> tuple[Callable[[int], Any], int]:
        """This pass's reader (run on the cluster: batch ``k`` of the pass from ``k``) and how many
        batches the pass has. Called when the pass starts: :class:`Passes` has told the order its
        epoch and resume offset."""
        specs = [np.asarray(batch, dtype=np.int64) for batch in self.sampler]
        return _Reader(BatchFetch(self.dataset, self.seed), self.collate_fn, specs), len(specs)

    def _read(self) -> Iterator[Any]:
        reader, n = self._plan()
        if not n:
            return
        ray = import_ray()
        read = _remote(ray)
        box = [ray.put(reader)]  # a list: not resolved
        tasks = self.tasks or max(int(ray.cluster_resources().get("CPU", 1)), 1)
        if self.engine == "data":
            yield from self._through_ray_data(ray, box, n, tasks)
            return
        window: collections.deque[Any] = collections.deque()
        submitted = 0
        try:
            while submitted < n or window:
                while submitted < n and len(window) < tasks + self.prefetch:
                    window.append(read.remote(box, submitted))
                    submitted += 1
                batch, journals = _unpack(ray.get(window.popleft()), self.pin_memory)  # in order; the rest run on
                _absorb(journals)
                if isinstance(batch, _Raised):
                    raise batch.error
                yield batch
        finally:  # a pass left early (an error, a stopped fit) cancels what it started, if Ray still runs
            for ref in window if ray.is_initialized() else ():
                with contextlib.suppress(Exception):  # best effort: a task may finish meanwhile
                    ray.cancel(ref)

    def _through_ray_data(self, ray: Any, box: list[Any], n: int, tasks: int) -> Iterator[Any]:
        """The pass's ``n`` batches read by a Ray Data pipeline, in order."""
        ray_data = import_ray_data()
        _quiet(ray_data)
        rows = ray_data.range(n, override_num_blocks=n)
        rows.context.execution_options.preserve_order = True  # batches in the order's order
        compute = ray_data.TaskPoolStrategy(size=min(tasks, n))
        read: Any = _read_rows  # Ray's stub knows functions of the batch alone, not of the batch and fn_args
        rows = rows.map_batches(read, batch_size=1, fn_args=(box,), compute=compute, num_cpus=1)
        stream = iter(rows.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=self.prefetch))
        try:
            for row in stream:
                batch, journals = _unpack(row["batch"][0], self.pin_memory)
                _absorb(journals)
                if isinstance(batch, _Raised):
                    raise batch.error
                yield batch
        finally:  # a pass left early ends the pipeline now, not at exit
            close = getattr(stream, "close", None)
            if close is not None:
                close()


def _quiet(ray_data: Any) -> None:
    """No progress bars or per-pass INFO lines from Ray Data: a pipeline runs every epoch."""
    with warnings.catch_warnings():  # Ray's own default context warns about its own deprecated field
        warnings.simplefilter("ignore", DeprecationWarning)
        context = ray_data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


_REMOTE: Any = None


def _remote(ray: Any) -> Any:
    """:func:`_read_batch` as a Ray remote function of one CPU (made once per process)."""
    global _REMOTE
    if _REMOTE is None:
        _REMOTE = ray.remote(num_cpus=1, max_retries=0)(_read_batch)
    return _REMOTE


class _Raised:
    """A batch whose reading raised a :class:`~chute.errors.DataError` (a file named), sent in its place
    as its class name and text, and raised again in the trainer as that class."""

    def __init__(self, error: DataError) -> None:
        self.kind, self.text = type(error).__name__, str(error)

    @property
    def error(self) -> DataError:
        import chute.errors

        kind = getattr(chute.errors, self.kind, None)
        if isinstance(kind, type) and issubclass(kind, DataError):
            with contextlib.suppress(Exception):  # a subclass whose constructor takes other arguments
                return kind(self.text)
        return DataError(self.text)


# -- On the cluster -----------------------------------------------------------------------------


class _Reader:
    """What a Ray task runs for batch ``k`` of a pass: fetch and collate."""

    def __init__(self, fetch: BatchFetch, collate_fn: Callable[[Any], Any] | None, specs: list[np.ndarray]) -> None:
        self.fetch, self.collate_fn, self.specs = fetch, collate_fn, specs

    def __call__(self, k: int) -> Any:
        data = self.fetch[self.specs[k].tolist()]
        return self.collate_fn(data) if self.collate_fn is not None else data


_PASS: dict[str, tuple[Any, list[BadSamples]]] = {}  # this worker process's reader of the current pass
_LIMITED = False


def _read_batch(box: list[Any], k: int) -> tuple[Any, list[Any]]:
    """The Ray task: batch ``k`` of the pass whose reader ``box`` holds, packed."""
    global _LIMITED
    if not _LIMITED:  # one thread per library, as in a DataLoader worker (the task has one CPU)
        from chute.loader.worker_init import library_threads, limit_library_threads

        limit_library_threads(library_threads())
        _LIMITED = True
    ref = box[0]
    key = ref.hex()
    if key not in _PASS:  # a worker runs many batches of a pass: its reader is fetched once
        _PASS.clear()
        with _collecting() as policies:
            reader = import_ray().get(ref)
        for policy in policies:
            policy.journal = [0, []]
        _PASS[key] = (reader, policies)
    reader, policies = _PASS[key]
    try:
        batch: Any = reader(k)
    except DataError as err:  # sent back as the batch, raised there as it is (Ray would keep only its text)
        batch = _Raised(err)
    journals = []
    for policy in policies:
        assert policy.journal is not None
        if policy.journal[0] or policy.journal[1]:
            journals.append((policy.token, policy.journal[0], policy.journal[1]))
            policy.journal = [0, []]
    return _pack(batch), journals


def _read_rows(rows: dict[str, np.ndarray], box: list[Any]) -> dict[str, np.ndarray]:
    """Ray Data's ``map_batches`` function: the row's batch id in, that batch read and packed out."""
    out = np.empty(1, dtype=object)
    out[0] = _read_batch(box, int(rows["id"][0]))
    return {"batch": out}


@contextlib.contextmanager
def _collecting() -> Iterator[list[BadSamples]]:
    """Collect the :class:`BadSamples` policies unpickled inside this block (the reader's copies)."""
    found: list[BadSamples] = []
    before, BadSamples.on_unpickle = BadSamples.on_unpickle, found.append
    try:
        yield found
    finally:
        BadSamples.on_unpickle = before


# -- Batches through Ray's object store: tensors as NumPy arrays (stored once, out of band) --------


def _pack(batch: Any) -> tuple[Any, list[np.ndarray]]:
    arrays: list[np.ndarray] = []
    return _flatten(batch, arrays), arrays


def _unpack(packed: tuple[tuple[Any, list[np.ndarray]], list[Any]], pin: bool) -> tuple[Any, list[Any]]:
    (structure, arrays), journals = packed
    return _rebuild(structure, arrays, pin), journals


class _T:
    """A tensor's place in the structure: its column, dtype and the permutation that made it dense."""

    def __init__(self, column: int, dtype: torch.dtype, perm: tuple[int, ...], view: torch.dtype | None) -> None:
        self.column, self.dtype, self.perm, self.view = column, dtype, perm, view


_NO_NUMPY = {torch.bfloat16: torch.int16, torch.float8_e4m3fn: torch.uint8, torch.float8_e5m2: torch.uint8}


def _flatten(batch: Any, arrays: list[np.ndarray]) -> Any:
    """``batch`` with each tensor moved into ``arrays`` and replaced by its :class:`_T`."""

    def store(tensor: torch.Tensor) -> _T:
        t = tensor.detach()
        # Keep the memory format (channels_last): store the dense permutation, undo it on arrival.
        strides = t.stride()
        perm = tuple(sorted(range(t.ndim), key=lambda d: (-strides[d], d)))
        dense = t.permute(perm).contiguous()
        view = _NO_NUMPY.get(t.dtype)
        arrays.append((dense.view(view) if view is not None else dense).numpy())
        return _T(len(arrays) - 1, t.dtype, perm, view)

    return apply_to_collection(batch, torch.Tensor, store)


def _rebuild(structure: Any, arrays: list[np.ndarray], pin: bool) -> Any:
    """The batch :func:`_flatten` took apart, its tensors over ``arrays``."""

    def load(place: _T) -> torch.Tensor:
        # Over Ray's shared memory, without a copy: NumPy marks it read-only because a Ray object is
        # immutable, but this batch's object is referenced by nothing else and lives as long as the
        # tensor; pinned (for a GPU) it is copied once, into page-locked memory.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "The given NumPy array is not writable"
            t = torch.from_numpy(arrays[place.column])
        if pin:
            t = torch.empty_like(t, pin_memory=True).copy_(t)
        if place.view is not None:
            t = t.view(place.dtype)
        return t.permute(tuple(place.perm.index(d) for d in range(len(place.perm))))

    return apply_to_collection(structure, _T, load)


def _absorb(journals: list[tuple[str, int, list[tuple[str, str]]]]) -> None:
    """Add what the cluster's reading counted and skipped to this process's policies."""
    for token, seen, skipped in journals:
        policy = BadSamples.by_token(token)
        if policy is not None:
            policy.absorb(seen, skipped)


__all__ = ["RayLoader", "connect", "import_ray"]
