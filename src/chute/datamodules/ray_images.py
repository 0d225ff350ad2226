"""``RayImagesDataModule``: an image folder read and decoded on a Ray cluster's CPUs, in chute's order."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from chute.datamodules.image_folder import ImageFolderDataModule
from chute.errors import ConfigError


class RayImagesDataModule(ImageFolderDataModule):
    """:class:`~chute.datamodules.ImageFolderDataModule` whose batches a Ray cluster reads.

    The same folders, transforms, imbalance strategies, batch hook and bad-file policy; the JPEG
    reading, decoding, cropping and collating run on the cluster's CPU workers, as Ray tasks or as a
    Ray Data pipeline (the loader backends ``ray`` and ``ray_data``,
    :mod:`chute.integrations.ray_tasks`), so more CPUs than this machine's can feed its GPUs. The
    order, the split across ranks and the position stay chute's: each sample once per epoch across
    ranks, the same batches as worker processes for a seed, exact mid-epoch resume.

    Args:
        root: As for ImageFolderDataModule; every Ray node must see it at this path (shared storage).
        address: The Ray cluster: ``"auto"`` (one ``ray start`` began on this machine, or
            ``RAY_ADDRESS``), ``"ray://host:10001"`` (Ray Client), or ``None``: ``RAY_ADDRESS`` if
            set, else a local instance started here (under DDP by rank 0, joined by the others).
        num_cpus: CPUs of the local instance started when there is no cluster (default: all).
        engine: ``tasks``: one Ray task per batch, in a window chute keeps (the default: measured
            faster); ``data``: a Ray Data pipeline per rank (``map_batches``, order preserved).
        **options: Every other ImageFolderDataModule argument; ``loader.num_workers`` is how many Ray
            tasks read at once (``auto``: as many as the cluster's CPUs allow). ``cache`` and
            ``device_augment`` are refused: a cache is one machine's memory map.

    Example:
        >>> from chute.datasets import DigitsFolder
        >>> import tempfile
        >>> dm = RayImagesDataModule(tempfile.mkdtemp() + "/digits", prepare=DigitsFolder(), image_mode="L",
        ...                          num_cpus=1, batch_size=16, transforms={"image_size": 8, "crop_pct": 1.0})
        >>> dm.prepare_data(); dm.setup("fit")
        >>> images, labels = next(iter(dm.train_dataloader()))
        >>> tuple(images.shape), dm.loader_settings.backend
        ((16, 1, 8, 8), 'ray')
    """

    unsupported = {
        key: "reads the files on the Ray cluster; a cache is one machine's memory map (leave it null)"
        for key in ("cache", "cache_size", "cache_dir", "device_augment")
    }

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        engine: str = "tasks",
        **options: Any,
    ) -> None:
        self._refuse_unsupported({key: options.get(key) not in (None, False) for key in self.unsupported}, options)
        if num_cpus is not None and (isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 1):
            raise ConfigError("num_cpus", num_cpus, "must be a number of CPUs >= 1, or null for all")
        if engine not in ("tasks", "data"):
            raise ConfigError("engine", engine, "must be 'tasks' (Ray tasks) or 'data' (a Ray Data pipeline)")
        super().__init__(root, **options)
        settings = self.loader_settings
        if settings.backend == "threads":
            raise ConfigError("loader.backend", "threads", f"{type(self).__name__} reads on Ray; leave it torch")
        if settings.num_workers == 0:  # the default: let Ray size the pool to the cluster
            settings = dataclasses.replace(settings, num_workers="auto", prefetch_factor=None)
        backend = "ray_data" if engine == "data" or settings.backend == "ray_data" else "ray"
        self.loader_settings = dataclasses.replace(settings, backend=backend)
        self.address = address
        self.num_cpus = num_cpus
        self.engine = "data" if backend == "ray_data" else "tasks"
        self.save_plain_hyperparameters(**options)

    def setup(self, stage: str | None = None) -> None:
        from chute.integrations.ray_tasks import connect

        connect(self.address, self.num_cpus)  # on every rank at once: under DDP rank 0 may start it
        super().setup(stage)
