"""Write a dataset folder once, atomically, and reuse it while its settings are unchanged.

Every bundled-data writer (digits PNGs, sequence JSONL, shards) goes through :func:`materialize`: the
folder is built in a temporary sibling and renamed into place, with a marker file recording the
settings. A crashed or concurrent writer (one per DDP rank) never leaves half a dataset behind, and a
folder that chute did not write is never overwritten.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from chute.errors import DataError

MARKER = ".chute-dataset.json"


def read_marker(root: Path) -> dict[str, Any] | None:
    """The settings a chute writer recorded in ``root``, or ``None``."""
    try:
        value = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def materialize(root: str | os.PathLike[str], manifest: dict[str, Any], write: Callable[[Path], None]) -> Path:
    """Make ``root`` hold what ``write(tmp_dir)`` writes for ``manifest``; no-op if it already does.

    Args:
        root: Target folder.
        manifest: JSON-serializable settings; a folder with a different manifest is rewritten.
        write: Fills the (empty, temporary) folder it is given.
    """
    root = Path(root)
    manifest = json.loads(json.dumps(manifest))  # compare as it will read back
    if read_marker(root) == manifest:
        return root
    if root.exists() and any(root.iterdir()) and read_marker(root) is None:
        raise DataError(f"'{root}' exists and was not written by chute; point the data path elsewhere or empty it.")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        write(tmp)
        (tmp / MARKER).write_text(json.dumps(manifest, indent=2))
        if root.exists():  # a stale folder from other settings, written by us
            shutil.rmtree(root, ignore_errors=True)
        try:
            tmp.rename(root)
        except OSError:
            if read_marker(root) != manifest:  # not a concurrent writer's identical folder
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


class SourceCopy:
    """Writes a chute DataModule's splits once (atomically) and describes them; subclasses say how.

    Subclasses implement :meth:`_write_split` (the samples of one split into ``out``; returns the
    count) and :meth:`_describe` (the manifest file), and name their unit of writing in ``per_file``.
    Samples are written as the source's ``dataset(split)`` returns them, in index order (image
    sources: pass one whose training transform is the deterministic eval pipeline).

    Args:
        source: A DataModule with ``dataset(split)`` (image folder, tabular, sequence, multi-task).
        per_file: Samples per shard or chunk file.
        splits: Splits to write.
        only_at: Write only when called with this location (the config's own default path); a
            DataModule pointed elsewhere reads the data found there and writes nothing
            (:meth:`~chute.datamodules.base.ChuteDataModule.run_prepare`). ``None``: write anywhere.
    """

    per_file_key = "per_file"  # the manifest's name for ``per_file`` (kept stable for existing copies)

    def __init__(
        self, source: Any, per_file: int, splits: Sequence[str] = ("train", "val"), *, only_at: str | None = None
    ) -> None:
        if per_file < 1:
            raise ValueError(f"{self.per_file_key}={per_file}: must be >= 1")
        self.source, self.per_file, self.splits = source, per_file, tuple(splits)
        self.only_at = only_at

    def manifest(self) -> dict[str, Any]:
        """What the copy is of: a changed source, setting or split list makes a new copy."""
        hparams = {k: v for k, v in dict(self.source.hparams).items() if k != "loader"}
        return {
            "source": f"{type(self.source).__module__}.{type(self.source).__qualname__}",
            "source_hparams": hparams, self.per_file_key: self.per_file, "splits": list(self.splits),
        }  # fmt: skip

    def __call__(self, root: str | os.PathLike[str]) -> Path:
        return materialize(root, json.loads(json.dumps(self.manifest(), default=str)), self._write)

    def _write(self, out: Path) -> None:
        source = self.source
        source.prepare_data()
        source.setup("fit")
        counts = {}
        for split in self.splits:
            dataset = source.dataset(split)
            counts[split] = self._write_split((dataset[i] for i in range(len(dataset))), out, split, len(dataset))
        self._describe(out, counts, describe_source(source))

    def _write_split(self, samples: Any, out: Path, split: str, total: int) -> Any:
        raise NotImplementedError

    def _describe(self, out: Path, splits: dict[str, Any], description: dict[str, Any]) -> None:
        raise NotImplementedError


def describe_source(source: Any) -> dict[str, Any]:
    """What a copy of ``source`` (a :class:`~chute.datamodules.ChuteDataModule`) must tell its
    DataModule: ``model_kwargs``, ``collate`` (the source's per-sample collate function),
    ``normalize`` (images) and ``class_names`` (classification)."""
    description: dict[str, Any] = {"model_kwargs": source.model_kwargs, "collate": source.sample_collate}
    if source.normalization is not None:
        mean, std = source.normalization
        description["normalize"] = {"mean": mean, "std": std}
    with contextlib.suppress(AttributeError):  # e.g. a regression target has no classes
        description["class_names"] = list(source.class_names)
    return description
