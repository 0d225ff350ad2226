"""``StreamingDataModule``: an iterable stream over JSONL shards, each sample once per epoch."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from chute.bad_samples import BadSamples, OnError
from chute.collate import collate_nested, resolve_collate
from chute.datamodules.base import ChuteDataModule
from chute.datasets.shards import ShardIndex, ShardStream
from chute.errors import ConfigError
from chute.loader import Loader, LoaderSettings, derive_seed, world_position
from chute.transforms.batch import NormalizeBatch

# Lightning warns about every IterableDataset with __len__, because a naive one repeats data in each
# worker. ShardStream's workers take turns at one sequence of batches per rank, and its length counts it.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined", category=UserWarning)


class StreamingDataModule(ChuteDataModule):
    """Stream a shard folder (``index.json`` + ``<split>-NNNNN.jsonl``) written by :class:`~chute.datasets.ShardedCopy`.

    The training stream shuffles the shard order each epoch (the same order on every rank), splits
    the epoch across distributed ranks by sample position and shuffles each rank's samples through
    a buffer, so every sample is read exactly once per epoch whatever the world size or shard sizes,
    and the batches are the same whatever ``num_workers`` (the workers take turns at them).
    ``len(train_dataloader())`` is the exact number of batches this rank yields, so progress bars
    and schedulers work. The index tells the model what it needs (``model_kwargs``), the default
    collate function and, for images, the normalization applied on the device.

    Args:
        root: Shard folder.
        shuffle_buffer: Lines held per rank for shuffling (0: no sample shuffling); each worker keeps
            its own copy of the buffer, as raw text.
        shuffle_shards: Shuffle the shard order each epoch.
        train_split: Split name to train on.
        val_split: Split for validation (and test/predict unless ``test_split`` is set).
        test_split: Split for test and predict.
        loader: DataLoader settings (``batch_size``, ``num_workers``, ... ; ``shuffle`` turns both
            shuffles off when false).
        seed: Seed of the shuffles; the epoch and rank are mixed in.
        prepare: Optional ``prepare(root)`` that writes the shards (e.g. a ``ShardedCopy``).
        collate_fn: Collate function or dotted path (default: the source's, else nested stacking/padding).
        on_error: A shard line that is not JSON (or not a sample): ``raise`` names the shard and the
            line; ``skip`` drops it, counts it (``bad_samples``) and logs it. Its batch is then one sample
            smaller; the other batches stay as they were (see :class:`~chute.datasets.ShardStream`).
        max_bad_fraction: With ``skip``, raise once more than this share of a split's lines were bad
            (measured over at least 100 lines).

    Example:
        >>> from chute.datamodules import TabularDataModule
        >>> from chute.datasets import ShardedCopy, SklearnTable
        >>> import tempfile
        >>> tmp = tempfile.mkdtemp()
        >>> source = TabularDataModule(tmp + "/wine.csv", target="cultivar", prepare=SklearnTable("wine"))
        >>> dm = StreamingDataModule(tmp + "/shards", prepare=ShardedCopy(source, samples_per_shard=50))
        >>> dm.prepare_data(); dm.setup("fit")
        >>> features, targets = next(iter(dm.train_dataloader()))
        >>> tuple(features.shape), dm.model_kwargs["num_classes"]
        ((64, 13), 3)
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        shuffle_buffer: int = 1000,
        shuffle_shards: bool = True,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str | None = None,
        loader: LoaderSettings | Mapping[str, Any] | None = None,
        seed: int = 0,
        prepare: Callable[[str], Any] | None = None,
        collate_fn: Callable[[Any], Any] | str | None = None,
        on_error: OnError = "raise",
        max_bad_fraction: float = 0.01,
    ) -> None:
        super().__init__(loader=loader, seed=seed, prepare=prepare, collate_fn=collate_fn)
        BadSamples(on_error, max_bad_fraction)  # check both now
        if shuffle_buffer < 0:
            raise ConfigError("shuffle_buffer", shuffle_buffer, "must be >= 0 (0: no sample shuffling)")
        self.root = os.fspath(root)
        self.shuffle_buffer = shuffle_buffer
        self.shuffle_shards = shuffle_shards
        self.split_names = {"train": train_split, "val": val_split, "test": test_split or val_split}
        self.index: ShardIndex | None = None
        self.on_error: OnError = on_error
        self.max_bad_fraction = float(max_bad_fraction)
        self._bad: dict[str, BadSamples] = {}
        self._save_plain_hparams(
            root=self.root, shuffle_buffer=shuffle_buffer, shuffle_shards=shuffle_shards, train_split=train_split,
            val_split=val_split, test_split=test_split, on_error=on_error, max_bad_fraction=self.max_bad_fraction,
        )  # fmt: skip

    def prepare_data(self) -> None:
        self._prepare_root(self.root)

    def setup(self, stage: str | None = None) -> None:
        if self.index is not None:
            return
        index = ShardIndex.read(self.root)
        for split in set(self.split_names.values()):
            index.shards(split)  # a missing split fails now, naming what the index has
        normalize = index.extra.get("normalize")
        if normalize is not None:
            self.batch_transform = NormalizeBatch(normalize["mean"], normalize["std"])
        self.index = index

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return dict(self._index().extra.get("model_kwargs", {}))

    @property
    def class_names(self) -> tuple[str, ...]:
        names = self._index().extra.get("class_names")
        if names is None:
            raise AttributeError("class_names: the shard index records no classes")
        return tuple(names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def teardown(self, stage: str | None = None) -> None:
        """Log each split's skipped lines (``on_error="skip"``) not reported at an epoch start yet."""
        for name, bad in self._bad.items():
            bad.report(f"split '{name}' of '{self.root}'")

    @property
    def bad_samples(self) -> dict[str, dict[str, Any]]:
        """Per shard split read so far: lines read (``seen``), ``skipped`` and the ``first`` skipped lines,
        summed over DataLoader workers (``on_error="skip"``; this process's rank only)."""
        return {name: bad.summary() for name, bad in self._bad.items()}

    def num_samples(self, split: str) -> int:
        return sum(n for _, n in self._index().shards(self.split_names[split]))

    def stream(self, split: str, train: bool = False) -> ShardStream:
        """The ``train``, ``val`` or ``test`` stream as its DataLoader reads it."""
        index, settings = self._index(), self.loader_settings
        shuffle = train and settings.shuffle
        rank, world = world_position(*self._world())
        default = resolve_collate(index.extra.get("collate"), collate_nested)
        name = self.split_names[split]
        if name not in self._bad:  # one policy per shard split, so the counts of its streams add up
            self._bad[name] = BadSamples(self.on_error, self.max_bad_fraction, what="line")
        return ShardStream(
            index.shards(self.split_names[split]),
            settings.batch_size_for(train),
            self._collate(default),
            shuffle_shards=shuffle and self.shuffle_shards,
            buffer_size=self.shuffle_buffer if shuffle else 0,
            seed=derive_seed(self.seed, 6),
            drop_last=train and settings.drop_last,
            rank=rank,
            world_size=world,
            on_error=self._bad[name],
            even_ranks=train,  # equal step counts under DDP; evaluation sees each sample once
        )

    def _split_loader(self, split: str, train: bool) -> Loader:
        return self._dataloader(self.stream(split, train=train), train=train, stream=True)

    def _index(self) -> ShardIndex:
        if self.index is None:
            raise self._not_set_up()
        return self.index
