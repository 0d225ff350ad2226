"""``LitDataModule``: stream LitData chunks from a local folder or an object store, sharded and resumable.

A chute LitData folder holds one LitData dataset per split (``<root>/train/``, ``<root>/val/``: binary
chunks plus LitData's ``index.json``) and ``chute.json`` beside them with what the DataModule needs:
sample counts, the model's ``model_kwargs``, class names, the collate function and, for images, the
normalization applied on the device. :class:`LitDataCopy` writes it from any chute DataModule
(``scripts/to_litdata.py`` is its command line).

Storage format: every leaf of a sample (``(image, target)``, ``{"inputs": ..., "targets": ...}``) is
written with LitData's raw serializers: tensors and arrays as dtype + shape + bytes, Python ints,
floats, bools and strings as themselves. Nothing is pickled, and reading refuses any other serializer
an ``index.json`` might name (LitData would otherwise unpickle a ``pickle`` leaf), so a dataset from
an untrusted bucket cannot run code. Images are stored decoded (``uint8``, after the deterministic
eval pipeline), so reading a sample is a memory copy.

litdata is an optional dependency (``pip install chute[litdata]``); it is imported when first used.

Over 300 lines because LitData needs an adapter on each side: the writer (:class:`LitDataCopy`,
with serializers that refuse pickling) and the reader (remote metadata, the resumable covering
loader in :mod:`chute.datamodules.litdata_cover`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset
from typing_extensions import Unpack

from chute.datamodules.base import CommonArgs
from chute.datamodules.described import DescribedDataModule
from chute.datamodules.litdata_cover import covering_loader_class, resumable_loader_class
from chute.datasets.materialize import SourceCopy
from chute.datasets.shards import _check_extra
from chute.errors import ConfigError, DataError
from chute.loader import Stream, WorkerInit, derive_seed
from chute.loader.orders import EvalBatches

META = "chute.json"
FORMAT = "chute-litdata/1"
# LitData serializers that read raw bytes and never unpickle (see the module docstring).
SAFE_SERIALIZERS = frozenset({"int", "float", "bool", "str", "tensor", "no_header_tensor", "numpy", "no_header_numpy"})
_SPLIT = re.compile(r"[A-Za-z0-9_-]+")
_REMOTE = ("s3://", "gs://", "gcs://", "r2://", "azure://", "hf://")


def _litdata() -> Any:
    try:
        import litdata
    except ImportError:
        raise ImportError(
            "LitDataModule and LitDataCopy need LitData: pip install 'chute[litdata]' (or pip install litdata)."
        ) from None
    return litdata


def is_remote(path: str) -> bool:
    """Whether ``path`` is an object-store URL (``s3://``, ``gs://``, ...) rather than a local folder."""
    return path.startswith(_REMOTE)


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
    LitData gives every rank the same number of batches (always on one node with its chunk shuffle), as
    with the map-style DataModules' padded sampler.
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

    def __init__(
        self,
        input_dir: str | os.PathLike[str],
        *,
        cache_dir: str | None = None,
        max_cache_size: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
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
        for name in set(self.split_names.values()):
            _check_split(name)
        self.save_plain_hyperparameters(storage_options=None)  # may hold credentials: never in a checkpoint

    def read_meta(self) -> dict[str, Any]:
        return read_chunks_meta(self.input_dir, self._cache_root(), self.storage_options)

    def dataloader(
        self,
        split: str,
        train: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        num_nodes: int = 1,
    ) -> Any:
        """The loader of ``split`` as ``rank`` of ``world_size`` sees it (default: the trainer's world,
        else torch.distributed's); passing ``rank`` and ``world_size`` simulates a distributed run.

        Training: LitData's ``StreamingDataLoader`` (sharded by LitData, shuffled, stateful), plus the
        extra batches that read what LitData leaves of the epoch (see the class docstring).
        Evaluation: the split read by global index through chute's unpadded eval sampler, so each
        sample is evaluated exactly once and every rank gets a near-equal share (LitData would deal out
        whole batches and leave small splits' ranks without one, which Lightning cannot sync).
        """
        litdata = _litdata()
        from litdata.utilities.env import _DistributedEnv

        settings, name = self.loader_settings, self.split_names[split]
        collate = self._sample_collate()
        if train and (rank is None or world_size is None):
            rank, world_size, num_nodes = self._distributed(_DistributedEnv)
        dataset = litdata.StreamingDataset(
            input_dir=_join(self.input_dir, name),
            cache_dir=_join(self._cache_root(), name) if is_remote(self.input_dir) else None,
            shuffle=train and settings.shuffle,
            # Under DDP LitData deals whole batches (equal steps on every rank); the loader reads the rest.
            drop_last=train and (settings.drop_last or (world_size or 1) > 1),
            seed=derive_seed(self.seed, Stream.LITDATA),
            serializers=refusing_serializers(),
            max_cache_size=self.max_cache_size,
            storage_options=self.storage_options or None,
        )
        if not train:
            n = self.num_samples(split)
            given = rank is not None and world_size is not None  # a simulated rank (else the trainer's)
            batches = (
                EvalBatches(n, settings.batch_size_for(False), rank=rank, world_size=world_size) if given else None
            )
            return self.build_dataloader(_Indexed(dataset, n), train=False, collate_fn=collate, batches=batches)
        assert rank is not None
        assert world_size is not None
        # The dataset reads the world from torch.distributed when built; the trainer knows it on any
        # cluster (and LitData's guess of the node count is wrong on multi-node CPU runs).
        dataset.distributed_env = _DistributedEnv(world_size, rank, num_nodes)
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
        )
        if self.trainer is not None:  # a rebuilt loader (reload_dataloaders_every_n_epochs) keeps the epoch
            loader.current_epoch = self.trainer.current_epoch
        return self._training_loader(loader)

    def split_dataloader(self, split: str, train: bool) -> Any:
        return self.dataloader(split, train=train)

    def _distributed(self, env: Any) -> tuple[int, int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size, self.trainer.num_nodes
        detected = env.detect()
        return detected.global_rank, detected.world_size, 1

    def _cache_root(self) -> str:
        return self.cache_dir or os.path.join(tempfile.gettempdir(), "chute-litdata")


class _Indexed(Dataset[Any]):
    """A map-style view of a LitData split: item ``i`` is the split's global sample ``i``."""

    def __init__(self, dataset: Any, num_samples: int) -> None:
        self.dataset, self.num_samples = dataset, num_samples

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> Any:
        return self.dataset[int(index)]


class LitDataCopy(SourceCopy):
    """Writes a chute DataModule's splits as LitData chunks plus ``chute.json``, once (atomically).

    Use it as a :class:`LitDataModule`'s ``prepare`` or from ``scripts/to_litdata.py``. Samples are
    written as the source's ``dataset(split)`` returns them (image sources: pass one whose training
    transform is the deterministic eval pipeline, as the script does), in index order.

    Args:
        source: A DataModule with ``dataset(split)`` (image folder, tabular, sequence, multi-task).
        chunk_size: Samples per chunk file. Chunks are LitData's unit of download and of sharding
            across ranks and workers: aim for tens of MB each on an object store.
        splits: Splits to write.
    """

    per_file_key = "chunk_size"

    def __init__(self, source: Any, chunk_size: int = 1024, splits: Sequence[str] = ("train", "val")) -> None:
        for split in splits:
            _check_split(split)
        super().__init__(source, chunk_size, splits)

    def __call__(self, root: str | os.PathLike[str]) -> Path:
        if is_remote(os.fspath(root)):
            raise ValueError(f"LitDataCopy writes a local folder, not '{root}': write locally, then copy it up.")
        _litdata()
        return super().__call__(root)

    def _write_split(self, samples: Any, out: Path, split: str, total: int) -> Any:
        return write_chunks(samples, out / split, self.per_file)

    def _describe(self, out: Path, splits: dict[str, Any], description: dict[str, Any]) -> None:
        meta = {"format": FORMAT, "splits": splits, **description}
        (out / META).write_text(json.dumps(meta, indent=2))


def write_chunks(samples: Any, out: Path, chunk_size: int) -> int:
    """Write ``samples`` as one LitData dataset in ``out`` (in this process); returns how many.

    Raises:
        TypeError: A sample leaf would need a pickling serializer (store tensors, arrays or numbers).
    """
    _litdata()
    from litdata.streaming.writer import BinaryWriter
    from litdata.utilities.env import _DistributedEnv

    out.mkdir(parents=True, exist_ok=True)
    writer = BinaryWriter(str(out), chunk_size=chunk_size)
    # One writer in this process: under DDP (prepare_data on rank 0) LitData would otherwise wait for
    # an index file from every rank before merging.
    writer._distributed_env, writer._rank = _DistributedEnv(1, 0, 1), 0
    count = 0
    for count, sample in enumerate(samples, start=1):
        writer.add_item(count - 1, sample)
    writer.done()
    writer.merge(num_workers=1)
    formats = json.loads((out / "index.json").read_text())["config"]["data_format"]
    unsafe = [f for f in formats if f.split(":")[0] not in SAFE_SERIALIZERS]
    if unsafe:
        raise TypeError(
            f"Samples have leaves LitData would pickle ({unsafe}); return tensors, arrays, numbers or strings."
        )
    return count


def read_chunks_meta(
    input_dir: str, cache_dir: str, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Read and check ``chute.json`` of ``input_dir`` (downloaded into ``cache_dir`` for a URL)."""
    path = _join(input_dir, META)
    if is_remote(input_dir):
        _litdata()
        from litdata.streaming.fs_provider import _get_fs_provider

        local = os.path.join(cache_dir, f"{hashlib.sha256(input_dir.encode()).hexdigest()[:16]}-{META}")
        os.makedirs(cache_dir, exist_ok=True)
        try:
            _get_fs_provider(path, dict(storage_options or {})).download_file(path, local)
        except Exception as err:  # botocore, obstore, gcsfs ... each raise their own "not found"
            raise DataError(
                f"Cannot read '{path}' ({type(err).__name__}: {err}): convert a dataset with scripts/to_litdata.py "
                "and upload the whole output folder there, or check the URL and data.storage_options."
            ) from err
        path_to_read = local
    else:
        path_to_read = path
    if not is_remote(input_dir) and os.path.exists(input_dir) and not os.path.isdir(input_dir):
        raise DataError(
            f"'{input_dir}' is a file, not a folder: data.input_dir names the folder scripts/to_litdata.py wrote "
            f"({META} and one LitData dataset per split)."
        )
    try:
        meta = json.loads(Path(path_to_read).read_text())
    except FileNotFoundError:
        raise DataError(f"No '{path}': convert a dataset with scripts/to_litdata.py first.") from None
    except (ValueError, OSError) as err:  # not JSON, not UTF-8 (UnicodeDecodeError), unreadable
        raise DataError(f"Cannot read '{path}' as a chute LitData description: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"'{path}' is not a chute LitData description (expected format {FORMAT!r}).")
    splits = meta.get("splits")
    if not isinstance(splits, dict) or not all(isinstance(n, int) and n >= 0 for n in splits.values()):
        raise DataError(f"'{path}': 'splits' must map split names to sample counts.")
    for name in splits:
        _check_split(name, where=f"'{path}'")
    _check_extra(path, meta)  # only chute's own collate functions, plain model_kwargs
    return meta


class _Refused:
    """Stands in for every LitData serializer that could unpickle, so reading one fails instead."""

    def __init__(self, name: str) -> None:
        self.name = name

    def setup(self, data_format: Any) -> None:
        raise DataError(
            f"This LitData dataset stores leaves with the '{data_format}' serializer, which chute refuses to read "
            f"(it could unpickle code). Allowed: {sorted(SAFE_SERIALIZERS)}; rewrite it with scripts/to_litdata.py."
        )

    def serialize(self, item: Any) -> tuple[bytes, str | None]:
        raise TypeError(f"chute does not write LitData '{self.name}' leaves")

    def deserialize(self, data: bytes) -> Any:
        self.setup(self.name)

    def can_serialize(self, item: Any) -> bool:
        return False


class _CopiedTensor:
    """LitData's tensor serializer, reading into a fresh buffer.

    LitData hands the deserializer a view of the chunk's read-only memory map; a tensor over it would
    alias a file LitData unmaps when it evicts the chunk (and torch warns that it is not writable).
    The copy costs one ``memcpy`` per leaf.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._inner: Any = None

    def _serializer(self) -> Any:
        if self._inner is None:
            from litdata.streaming.serializers import _SERIALIZERS

            self._inner = copy.copy(_SERIALIZERS[self.name])
        return self._inner

    def setup(self, data_format: Any) -> None:
        self._serializer().setup(data_format)

    def serialize(self, item: Any) -> tuple[bytes, str | None]:
        return self._serializer().serialize(item)

    def deserialize(self, data: bytes) -> Any:
        return self._serializer().deserialize(bytearray(data))

    def can_serialize(self, item: Any) -> bool:
        return bool(self._serializer().can_serialize(item))


def refusing_serializers() -> dict[str, Any]:
    """LitData ``serializers`` for reading: the raw ones (tensors copied out of the memory map), and a
    refusal for every other kind."""
    from litdata.streaming.serializers import _SERIALIZERS

    serializers: dict[str, Any] = {name: _Refused(name) for name in _SERIALIZERS if name not in SAFE_SERIALIZERS}
    serializers.update({name: _CopiedTensor(name) for name in ("tensor", "no_header_tensor")})
    return serializers


def _check_split(name: str, where: str = "split") -> None:
    if not isinstance(name, str) or not _SPLIT.fullmatch(name):
        raise DataError(f"{where}: split name {name!r} must be letters, digits, '_' or '-' (it names a sub-folder).")


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}" if is_remote(root) else os.path.join(root, name)
