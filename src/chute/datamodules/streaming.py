"""``StreamingDataModule``: an iterable stream over JSONL shards, each sample once per epoch."""

from __future__ import annotations

import os
import warnings
from typing import Any

from typing_extensions import Unpack

from chute.datamodules.base import CommonArgs
from chute.datamodules.described import DescribedDataModule
from chute.datasets.shard_format import ShardIndex
from chute.datasets.shards import ShardStream
from chute.errors import ConfigError, DataError
from chute.loader import Loader, Stream, derive_seed, world_position

# Lightning warns about every IterableDataset with __len__, because a naive one repeats data in each
# worker. ShardStream's workers take turns at one sequence of batches per rank, and its length counts it.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined", category=UserWarning)


class StreamingDataModule(DescribedDataModule):
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

    unsupported = {"imbalance": "has no class targets to balance (use a loss weight in the model)"}

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        shuffle_buffer: int = 1000,
        shuffle_shards: bool = True,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str | None = None,
        **common: Unpack[CommonArgs],
    ) -> None:
        super().__init__(
            root, train_split=train_split, val_split=val_split, test_split=test_split, **common
        )  # fmt: skip
        if shuffle_buffer < 0:
            raise ConfigError("shuffle_buffer", shuffle_buffer, "must be >= 0 (0: no sample shuffling)")
        self.shuffle_buffer = shuffle_buffer
        self.shuffle_shards = shuffle_shards
        self.index: ShardIndex | None = None
        self.save_plain_hyperparameters()

    def read_meta(self) -> dict[str, Any]:
        self.index = ShardIndex.read(self.root)
        for split in set(self.split_names.values()) & set(self.index.splits):
            missing = [file for file, _ in self.index.shards(split) if not os.path.isfile(file)]
            if missing:  # found now, not at the first read of that shard in some epoch
                raise DataError(
                    f"Shard index '{self.root}/index.json' lists {len(missing)} file(s) of split '{split}' that are "
                    f"missing, first '{missing[0]}'. Write the shards again: delete '{self.root}' and run "
                    "prepare_data (data.prepare) or scripts/write_shards.py."
                )
        counts = {name: sum(n for _, n in shards) for name, shards in self.index.splits.items()}
        return {**self.index.extra, "splits": counts}

    def stream(self, split: str, train: bool = False) -> ShardStream:
        """The ``train``, ``val`` or ``test`` stream as its DataLoader reads it."""
        index, settings = self._index(), self.loader_settings
        shuffle = train and settings.shuffle
        rank, world = world_position(*self.rank_and_world())
        name = self.split_names[split]
        return ShardStream(
            index.shards(self.split_names[split]),
            settings.batch_size_for(train),
            self._sample_collate(),
            shuffle_shards=shuffle and self.shuffle_shards,
            buffer_size=self.shuffle_buffer if shuffle else 0,
            seed=derive_seed(self.seed, Stream.SHARDS),
            drop_last=train and settings.drop_last,
            rank=rank,
            world_size=world,
            # one per shard split: its streams' counts add up
            on_error=self.bad_policy(name, "line", per_pass=sum(count for _, count in index.shards(name))),
            layout=index.layout(name),
            even_ranks=train,  # equal step counts under DDP; evaluation sees each sample once
        )

    def split_dataloader(self, split: str, train: bool) -> Loader:
        return self.build_dataloader(self.stream(split, train=train), train=train, stream=True)

    def _index(self) -> ShardIndex:
        self._meta()  # set up
        assert self.index is not None
        return self.index
