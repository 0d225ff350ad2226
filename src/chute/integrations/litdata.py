"""``LitDataModule``: stream LitData chunks from a local folder or an object store, sharded and resumable.

An integration (:mod:`chute.integrations`): LitData's own loader reads, orders and resumes, and the
contract it allows is weaker than chute's own loader's; the package docstring has the table.

A chute LitData folder holds one LitData dataset per split (``<root>/train/``, ``<root>/val/``: binary
chunks plus LitData's ``index.json``) and ``chute.json`` beside them with what the DataModule needs:
sample counts, the model's ``model_kwargs``, class names, the collate function and, for images, the
normalization applied on the device. :class:`~chute.integrations.litdata_copy.LitDataCopy` writes
it from any chute DataModule (``scripts/to_litdata.py`` is its command line); what may be read is
:mod:`chute.integrations.litdata_format`.

Storage format: every leaf of a sample (``(image, target)``, ``{"inputs": ..., "targets": ...}``) is
written with LitData's raw serializers: tensors and arrays as dtype + shape + bytes, Python ints,
floats, bools and strings as themselves. Nothing is pickled, and reading refuses any other serializer
an ``index.json`` might name (LitData would otherwise unpickle a ``pickle`` leaf), so a dataset from
an untrusted bucket cannot run code. Images are stored decoded (``uint8``, after the deterministic
eval pipeline), so reading a sample is a memory copy.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from typing import Any

from torch.utils.data import Dataset
from typing_extensions import Unpack

from chute.datamodules.base import CommonArgs
from chute.datamodules.described import DescribedDataModule
from chute.datamodules.loading import overfitting
from chute.errors import ConfigError
from chute.integrations.litdata_cover import covering_loader_class, resumable_loader_class
from chute.integrations.litdata_format import (
    check_split,
    import_litdata,
    is_remote,
    join_path,
    read_chunks_meta,
    refusing_serializers,
)
from chute.integrations.litdata_retry import Outage
from chute.loader import Stream, WorkerInit, derive_seed
from chute.loader.orders import EvalBatches


class LitDataModule(DescribedDataModule):
    """Train and evaluate from LitData chunks written by :class:`LitDataCopy` (``scripts/to_litdata.py``).

    ``input_dir`` is a local folder or an object-store URL (``s3://bucket/prefix``, ``gs://...``);
    remote chunks are downloaded into ``cache_dir`` as they are needed, a few ahead, and evicted past
    ``max_cache_size``. LitData splits each epoch across nodes, ranks and DataLoader workers by chunk
    ranges, and the training set is reshuffled every epoch (chunk order and samples within chunks) from
    ``seed``. Under DDP every rank must take the same number of steps (a rank with an extra batch would
    wait forever for the others' gradients), so LitData gives each rank whole batches and leaves the rest
    of the epoch unread (up to ``world_size * batch_size`` samples with its chunk shuffle; more with the
    window shuffle it uses on NFS or Lustre). This DataModule reads that rest itself, as extra batches
    at the end of the epoch, dealt so that every rank ends on the same step (one extra batch each in
    the first case). So every training sample is read each epoch, and a sample repeats only when the
    rest is smaller than the number of extra batches: at most ``world_size - 1`` repeats whenever
    LitData gives every rank the same number of batches (always with its chunk shuffle), as with the
    map-style DataModules' padded sampler. On several nodes LitData plans every epoch as one node of
    ``world_size`` ranks would (its own multi-node plan keeps each node on its first epoch's chunks and
    from the second epoch reads some samples twice and others never); the price is traffic, not
    samples: from the second epoch a node may download chunks another node read before.
    ``loader.drop_last=True`` keeps LitData's whole batches only. Evaluation reads every sample once.

    The training loader is LitData's ``StreamingDataLoader``, which has ``state_dict`` /
    ``load_state_dict``; Lightning saves that state in every checkpoint and restores it on
    ``fit(ckpt_path=...)``, so a run resumed mid-epoch reads exactly the samples the interrupted epoch
    had left, in the same order (the extra batches too). A run resumed with another world size, number
    of workers or batch size follows LitData's elastic resume for the rest of that epoch, which the
    extra batches do not account for: that one epoch may miss or repeat a few samples.

    Args:
        input_dir: The folder or URL holding ``chute.json`` and one LitData dataset per split.
        cache_dir: Where remote chunks are cached (default: a ``chute-litdata`` folder in the temp dir).
            Local folders are read in place.
        max_cache_size: Cache budget for remote chunks, e.g. ``"50GB"`` (default: LitData's, 75% of
            free disk).
        storage_options: Passed to LitData's object-store client (e.g. ``{"endpoint_url": ...}``);
            not saved in checkpoints.
        retry_seconds: How long reads from an object store are tried again while they fail (a server
            restarting, a network outage), counted from the last read that worked; training goes on
            from the loader's own position, so no sample is lost or repeated. Past it, a
            :class:`~chute.errors.DataError` names the URL and the endpoint. 0 fails at once, as LitData
            does after its own few retries. Local folders are read once.
        train_split: Split to train on.
        val_split: Split for validation (and test/predict unless ``test_split`` is set).
        test_split: Split for test and predict.
        loader: DataLoader settings (``num_workers`` must be an integer; ``backend=torch``).
            ``drop_last`` also evens out ranks on a single process.
        seed: Seed of the per-epoch shuffle.
        prepare: Optional ``prepare(input_dir)`` that writes the chunks (e.g. a :class:`LitDataCopy`).
        collate_fn: Collate function or dotted path (default: the one ``chute.json`` names, else
            nested stacking/padding).

    Example:
        >>> from chute.datamodules import TabularDataModule
        >>> from chute.integrations import LitDataCopy
        >>> from chute.datasets import SklearnTable
        >>> import tempfile
        >>> tmp = tempfile.mkdtemp()
        >>> source = TabularDataModule(tmp + "/wine.csv", target="cultivar", prepare=SklearnTable("wine"))
        >>> dm = LitDataModule(tmp + "/chunks", prepare=LitDataCopy(source, chunk_size=50))
        >>> dm.prepare_data(); dm.setup("fit")
        >>> features, targets = next(iter(dm.train_dataloader()))
        >>> tuple(features.shape), dm.model_kwargs["num_classes"]
        ((64, 13), 3)
    """

    unsupported = {
        "imbalance": "takes LitData's own sample order, which chute's imbalance samplers cannot change",
        "on_error": "has no bad-sample policy (LitData reads the chunks itself): on_error must be 'raise'",
        "max_bad_fraction": "has no bad-sample policy (LitData reads the chunks itself)",
    }

    root_argument = "input_dir"

    def __init__(
        self,
        input_dir: str | os.PathLike[str],
        *,
        cache_dir: str | None = None,
        max_cache_size: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        retry_seconds: float = 60.0,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str | None = None,
        **common: Unpack[CommonArgs],
    ) -> None:
        super().__init__(
            input_dir, train_split=train_split, val_split=val_split, test_split=test_split, **common
        )  # fmt: skip
        if self.loader_settings.auto or self.loader_settings.backend != "torch":
            raise ConfigError(
                "loader", "num_workers=auto" if self.loader_settings.auto else "backend=threads",
                "LitDataModule needs backend=torch and an integer num_workers (LitData's loader shards by worker)",
            )  # fmt: skip
        self.input_dir = self.root
        self.cache_dir = cache_dir
        self.max_cache_size = max_cache_size
        self.storage_options = dict(storage_options or {})
        if not retry_seconds >= 0:  # NaN too
            raise ConfigError("data.retry_seconds", retry_seconds, "must be a number of seconds >= 0")
        self.retry_seconds = float(retry_seconds)
        for name in set(self.split_names.values()):
            check_split(name)
        self.save_plain_hyperparameters(storage_options=None)  # may hold credentials: never in a checkpoint

    def read_meta(self) -> dict[str, Any]:
        return read_chunks_meta(self.input_dir, self._cache_root(), self._client_options(), self._outage())

    def dataloader(
        self,
        split: str,
        train: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> Any:
        """The loader of ``split`` as ``rank`` of ``world_size`` sees it (default: the trainer's world,
        else torch.distributed's); passing ``rank`` and ``world_size`` simulates a distributed run.

        Training: LitData's ``StreamingDataLoader`` (sharded by LitData, shuffled, stateful), plus the
        extra batches that read what LitData leaves of the epoch (see the class docstring).
        Evaluation: the split read by global index through chute's unpadded eval sampler, so each
        sample is evaluated exactly once and every rank gets a near-equal share (LitData would deal out
        whole batches and leave small splits' ranks without one, which Lightning cannot sync).
        """
        litdata = import_litdata()
        from litdata.utilities.env import _DistributedEnv

        settings, name = self.loader_settings, self.split_names[split]
        collate = self._sample_collate()
        if train and (rank is None or world_size is None):
            rank, world_size = self._distributed(_DistributedEnv)
        outage = self._outage(name)

        def open_split() -> Any:  # reads the split's index.json (from the store, for a URL)
            return litdata.StreamingDataset(
                input_dir=join_path(self.input_dir, name),
                cache_dir=join_path(self._cache_root(), name) if is_remote(self.input_dir) else None,
                shuffle=train and settings.shuffle,
                # Under DDP LitData deals whole batches (equal steps on every rank); the loader reads the rest.
                drop_last=train and (settings.drop_last or (world_size or 1) > 1),
                seed=derive_seed(self.seed, Stream.LITDATA),
                serializers=refusing_serializers(),
                max_cache_size=self.max_cache_size,
                storage_options=self._client_options() or None,
            )

        dataset = outage.call(open_split) if outage is not None else open_split()
        if not train:
            n = self.num_samples(split)
            given = rank is not None and world_size is not None  # a simulated rank (else the trainer's)
            batches = (
                EvalBatches(n, settings.batch_size_for(False), rank=rank, world_size=world_size) if given else None
            )
            indexed = _Indexed(dataset, n, outage)
            return self.build_dataloader(indexed, train=False, collate_fn=collate, batches=batches)
        assert rank is not None
        assert world_size is not None
        # The dataset reads the world from torch.distributed when built; the trainer knows it on any
        # cluster. LitData is told one node whatever the cluster: its multi-node plan keeps each node on
        # the chunks it read in the first epoch, and from the second epoch reads a chunk split between
        # two nodes on both and one that neither started on none (issue 29); one node of ``world_size``
        # ranks is a new global permutation of the chunks every epoch, which the extra batches complete.
        dataset.distributed_env = _DistributedEnv(world_size, rank, 1)
        workers = settings.num_workers
        loader_class = resumable_loader_class() if settings.drop_last else covering_loader_class()
        loader = loader_class(
            dataset,
            batch_size=settings.batch_size,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=settings.resolved_pin_memory,
            persistent_workers=settings.resolved_persistent_workers,
            prefetch_factor=settings.prefetch_factor,
            timeout=settings.timeout,
            multiprocessing_context=settings.multiprocessing_context if workers else None,
            worker_init_fn=WorkerInit(rank, seed=settings.seed_workers, opencv=False) if workers else None,
            outage=outage,
            replay=overfitting(self.trainer),
        )
        if self.trainer is not None:  # a rebuilt loader (reload_dataloaders_every_n_epochs) keeps the epoch
            loader.current_epoch = self.trainer.current_epoch
        return self._training_loader(loader)

    def split_dataloader(self, split: str, train: bool) -> Any:
        return self.dataloader(split, train=train)

    def _distributed(self, env: Any) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        detected = env.detect()
        return detected.global_rank, detected.world_size

    def _outage(self, split_name: str | None = None) -> Outage | None:
        """The retry budget of a remote split, or of the folder (None for a local folder: read once)."""
        if not is_remote(self.input_dir):
            return None
        url = join_path(self.input_dir, split_name) if split_name else self.input_dir
        return Outage(url, self.storage_options.get("endpoint_url"), self.retry_seconds)

    def _client_options(self) -> dict[str, Any]:
        """``storage_options`` as LitData's clients get them. For S3, unless the options give a botocore
        ``config``: 4 attempts a request. LitData asks boto3 for 1,000 (adaptive backoff up to 20 s
        each), so a store that stays down held each request for hours; chute's own retries
        (``retry_seconds``) bound the wait instead."""
        options = dict(self.storage_options)
        if str(self.input_dir).startswith("s3://") and "config" not in options:
            from botocore.config import Config  # type: ignore[import-untyped]  # LitData reads S3 with boto3

            options["config"] = Config(retries={"total_max_attempts": 4, "mode": "standard"})
        return options

    def _cache_root(self) -> str:
        return self.cache_dir or os.path.join(tempfile.gettempdir(), "chute-litdata")


class _Indexed(Dataset[Any]):
    """A map-style view of a LitData split: item ``i`` is the split's global sample ``i`` (read again
    within ``outage``'s budget while a remote read fails)."""

    def __init__(self, dataset: Any, num_samples: int, outage: Outage | None = None) -> None:
        self.dataset, self.num_samples, self.outage = dataset, num_samples, outage

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> Any:
        if self.outage is None:
            return self.dataset[int(index)]
        return self.outage.call(lambda: self.dataset[int(index)], reset=self.dataset.reset)
