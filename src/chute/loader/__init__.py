"""The loader core: settings, seeding, distributed position, worker diagnostics and building.

Every loader chute returns is built by :func:`build_loader` from one :class:`LoaderSettings`.
:class:`LoaderSettings` loads at once (no torch); the rest on first use (see :mod:`chute._lazy`).
"""

from typing import TYPE_CHECKING

from chute._lazy import lazy_exports
from chute.loader.settings import LoaderSettings, as_loader_settings

if TYPE_CHECKING:
    from chute.loader.build import (
        Batched,
        BatchFetch,
        ChuteDataLoader,
        ChuteThreadedLoader,
        Loader,
        Passes,
        build_loader,
        default_order,
    )
    from chute.loader.distributed import current_rank, world_position
    from chute.loader.seeding import (
        SharedEpoch,
        Stream,
        WorkerSeeder,
        batch_generator,
        derive_seed,
        sample_seed,
        seed_everything_local,
        seeded_call,
    )
    from chute.loader.threaded import DeviceCopy, StagingPool, ThreadedLoader
    from chute.loader.worker_init import WorkerInit, library_threads, limit_library_threads
    from chute.loader.workers import GuardedIterator, InFlight, TrackedDataset, WorkerDiedError

_MODULES = {
    "chute.loader.build": (
        "Batched", "BatchFetch", "ChuteDataLoader", "ChuteThreadedLoader", "Loader", "Passes", "build_loader",
        "default_order",
    ),
    "chute.loader.distributed": ("current_rank", "world_position"),
    "chute.loader.seeding": (
        "SharedEpoch", "Stream", "WorkerSeeder", "batch_generator", "derive_seed", "sample_seed",
        "seed_everything_local", "seeded_call",
    ),
    "chute.loader.threaded": ("DeviceCopy", "StagingPool", "ThreadedLoader"),
    "chute.loader.worker_init": ("WorkerInit", "library_threads", "limit_library_threads"),
    "chute.loader.workers": ("GuardedIterator", "InFlight", "TrackedDataset", "WorkerDiedError"),
}  # fmt: skip
__getattr__, __dir__ = lazy_exports(globals(), {name: module for module, names in _MODULES.items() for name in names})

__all__ = [
    "BatchFetch",
    "Batched",
    "ChuteDataLoader",
    "ChuteThreadedLoader",
    "DeviceCopy",
    "GuardedIterator",
    "InFlight",
    "Loader",
    "LoaderSettings",
    "Passes",
    "SharedEpoch",
    "StagingPool",
    "Stream",
    "ThreadedLoader",
    "TrackedDataset",
    "WorkerDiedError",
    "WorkerInit",
    "WorkerSeeder",
    "as_loader_settings",
    "batch_generator",
    "build_loader",
    "current_rank",
    "default_order",
    "derive_seed",
    "library_threads",
    "limit_library_threads",
    "sample_seed",
    "seed_everything_local",
    "seeded_call",
    "world_position",
]
