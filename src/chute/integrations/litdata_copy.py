"""Writing a chute LitData folder: :class:`LitDataCopy` writes any chute DataModule's splits as
LitData chunks plus ``chute.json``, every leaf with a serializer that never pickles
(:mod:`chute.integrations.litdata_format`)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chute.datasets.materialize import SourceCopy
from chute.integrations.litdata_format import (
    FORMAT,
    META,
    SAFE_SERIALIZERS,
    check_split,
    import_litdata,
    is_remote,
)


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
        only_at: Write only when called with this location (the config's own default path); a
            DataModule pointed elsewhere reads the data found there and writes nothing
            (:meth:`~chute.datamodules.base.ChuteDataModule.run_prepare`). ``None``: write anywhere.
    """

    per_file_key = "chunk_size"

    def __init__(
        self,
        source: Any,
        chunk_size: int = 1024,
        splits: Sequence[str] = ("train", "val"),
        *,
        only_at: str | None = None,
    ) -> None:
        for split in splits:
            check_split(split)
        super().__init__(source, chunk_size, splits, only_at=only_at)

    def __call__(self, root: str | os.PathLike[str]) -> Path:
        if is_remote(os.fspath(root)):
            raise ValueError(f"LitDataCopy writes a local folder, not '{root}': write locally, then copy it up.")
        import_litdata()
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
    import_litdata()
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
