"""``ShardedCopy``: write any chute DataModule's splits as JSONL shards (for StreamingDataModule)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chute.datasets.materialize import materialize
from chute.datasets.shards import write_index, write_shards


class ShardedCopy:
    """Writes a chute DataModule's ``train`` and ``val`` splits as JSONL shards, once (atomically).

    Use it as a StreamingDataModule's ``prepare`` (``prepare(root)``) or from
    ``scripts/write_shards.py``. The index records what the source tells its model
    (``model_kwargs``), its per-sample collate function and, for images, the normalization, so a
    StreamingDataModule over the shards trains the same model.

    Args:
        source: A DataModule with ``dataset(split)`` (image folder, tabular, sequence, multi-task).
        samples_per_shard: Samples per shard file.
        splits: Splits to write.
    """

    def __init__(self, source: Any, samples_per_shard: int = 256, splits: Sequence[str] = ("train", "val")) -> None:
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard={samples_per_shard}: must be >= 1")
        self.source = source
        self.samples_per_shard = samples_per_shard
        self.splits = tuple(splits)

    def manifest(self) -> dict[str, Any]:
        hparams = {k: v for k, v in dict(getattr(self.source, "hparams", {})).items() if k != "loader"}
        return {
            "source": f"{type(self.source).__module__}.{type(self.source).__qualname__}",
            "source_hparams": hparams, "samples_per_shard": self.samples_per_shard, "splits": list(self.splits),
        }  # fmt: skip

    def __call__(self, root: str | os.PathLike[str]) -> Path:
        return materialize(root, json.loads(json.dumps(self.manifest(), default=str)), self._write)

    def _write(self, out: Path) -> None:
        source = self.source
        source.prepare_data()
        source.setup("fit")
        splits = {}
        for split in self.splits:
            dataset = source.dataset(split)
            samples = (dataset[i] for i in range(len(dataset)))
            splits[split] = write_shards(samples, out, split, self.samples_per_shard, total=len(dataset))
        extra: dict[str, Any] = {
            "model_kwargs": source.model_kwargs,
            "collate": getattr(source, "sample_collate", None),
        }
        mean, std = getattr(source, "mean", None), getattr(source, "std", None)
        if isinstance(mean, list) and isinstance(std, list):
            extra["normalize"] = {"mean": mean, "std": std}
        with contextlib.suppress(AttributeError):  # e.g. a regression target has no classes
            extra["class_names"] = list(source.class_names)
        write_index(out, splits, **extra)
