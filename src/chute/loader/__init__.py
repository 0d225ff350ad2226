"""The loader core: settings, seeding, distributed position, worker diagnostics and building.

Every loader chute returns is built by :func:`build_loader` from one :class:`LoaderSettings`.
"""

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
    WorkerSeeder,
    batch_generator,
    derive_seed,
    sample_seed,
    seed_everything_local,
    seeded_call,
)
from chute.loader.settings import LoaderSettings, as_loader_settings
from chute.loader.threaded import DeviceCopy, StagingPool, ThreadedLoader
from chute.loader.workers import GuardedIterator, InFlight, TrackedDataset, WorkerDiedError

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
    "ThreadedLoader",
    "TrackedDataset",
    "WorkerDiedError",
    "WorkerSeeder",
    "as_loader_settings",
    "batch_generator",
    "build_loader",
    "current_rank",
    "default_order",
    "derive_seed",
    "sample_seed",
    "seed_everything_local",
    "seeded_call",
    "world_position",
]
