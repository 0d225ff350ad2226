"""``LoaderSettings``: every DataLoader knob, checked once, whether it came from Python or from Hydra.

Free of torch at import, so ``train.py`` checks a composed config before the heavy imports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chute.errors import ConfigError, check_bool

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
            ``num_workers=auto`` both backends are probed and the faster one is kept. ``ray``: Ray
            tasks on a Ray cluster read the batches (:mod:`chute.integrations.ray_tasks`);
            ``ray_data``: a Ray Data pipeline does (``map_batches``, measured slower); for both,
            ``num_workers`` is how many Ray tasks read at once (``auto``: as many as the cluster's
            CPUs allow).

    Example:
        >>> import torch
        >>> LoaderSettings(batch_size=128, num_workers=4).resolved_pin_memory == torch.cuda.is_available()
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
        for key in ("drop_last", "shuffle", "seed_workers", "pin_memory", "persistent_workers"):
            check_bool(key, getattr(self, key), optional=key in ("pin_memory", "persistent_workers"))
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
        if self.backend not in BACKENDS:
            raise ConfigError("backend", self.backend, f"must be one of {list(BACKENDS)}")
        if self.on_ray:
            _check_ray(self)
        if self.backend == "threads" and self.multiprocessing_context is not None:
            raise ConfigError(
                "multiprocessing_context", self.multiprocessing_context, "has no effect with backend=threads"
            )
        if self.multiprocessing_context not in _MP_CONTEXTS:
            raise ConfigError(
                "multiprocessing_context", self.multiprocessing_context, f"must be one of {list(_MP_CONTEXTS)}"
            )

    @property
    def on_ray(self) -> bool:
        """Whether a Ray cluster reads the batches (``backend`` ``ray`` or ``ray_data``)."""
        return self.backend in RAY_BACKENDS

    @property
    def auto(self) -> bool:
        """Whether ``num_workers`` (and the prefetch depth) are left to the autotuner."""
        return self.num_workers == "auto"

    @property
    def resolved_pin_memory(self) -> bool:
        import torch  # here, not at the top: composing and checking a config must not import torch

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


RAY_BACKENDS = ("ray", "ray_data")
BACKENDS = ("torch", "threads", *RAY_BACKENDS)


def _check_ray(settings: LoaderSettings) -> None:
    """What a Ray pipeline has no use for: worker processes' own knobs."""
    backend = settings.backend
    if settings.num_workers == 0:
        raise ConfigError(
            "num_workers", 0, f"is how many Ray tasks read at once with backend={backend}: a number >= 1, or 'auto'"
        )
    for key in ("persistent_workers", "multiprocessing_context"):
        if value := getattr(settings, key):
            raise ConfigError(key, value, f"does nothing with backend={backend} (Ray has its workers); leave it null")
    if settings.timeout:
        raise ConfigError("timeout", settings.timeout, f"has no effect with backend={backend}; leave it 0")


def _check_int(settings: LoaderSettings, key: str, minimum: int, hint: str = "") -> None:
    value = getattr(settings, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        reason = f"must be an integer >= {minimum}" + (f" ({hint})" if hint else "")
        raise ConfigError(key, value, reason)


def as_loader_settings(loader: LoaderSettings | Mapping[str, Any] | None) -> LoaderSettings:
    """Accept settings as an object, a mapping of its fields (e.g. a Hydra node) or ``None``."""
    if loader is None:
        return LoaderSettings()
    if isinstance(loader, LoaderSettings):
        return loader
    if isinstance(loader, Mapping):
        return LoaderSettings(**{str(k): v for k, v in loader.items() if k != "_target_"})
    raise TypeError(f"loader must be LoaderSettings, a mapping or None, not {type(loader).__name__}")
