"""``ShardedCopy``: write any chute DataModule's splits as JSONL shards (for StreamingDataModule)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chute.datasets.materialize import SourceCopy
from chute.datasets.shard_format import write_index, write_shards


class ShardedCopy(SourceCopy):
    """Writes a chute DataModule's ``train`` and ``val`` splits as JSONL shards, once (atomically).

    Use it as a StreamingDataModule's ``prepare`` (``prepare(root)``) or from
    ``scripts/write_shards.py``. The index records what the source tells its model
    (``model_kwargs``), its per-sample collate function and, for images, the normalization, so a
    StreamingDataModule over the shards trains the same model.

    Args:
        source: A DataModule with ``dataset(split)`` (image folder, tabular, sequence, multi-task).
        samples_per_shard: Samples per shard file.
        splits: Splits to write.
        only_at: Write only when called with this location (the config's own default path); a
            DataModule pointed elsewhere reads the data found there and writes nothing
            (:meth:`~chute.datamodules.base.ChuteDataModule.run_prepare`). ``None``: write anywhere.
    """

    per_file_key = "samples_per_shard"

    def __init__(
        self,
        source: Any,
        samples_per_shard: int = 256,
        splits: Sequence[str] = ("train", "val"),
        *,
        only_at: str | None = None,
    ) -> None:
        super().__init__(source, samples_per_shard, splits, only_at=only_at)

    def _write_split(self, samples: Any, out: Path, split: str, total: int) -> Any:
        return write_shards(samples, out, split, self.per_file, total=total)

    def _describe(self, out: Path, splits: dict[str, Any], description: dict[str, Any]) -> None:
        write_index(out, splits, **description)
