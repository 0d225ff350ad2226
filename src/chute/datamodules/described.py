"""Sources described by their own metadata: a copy of another DataModule's splits plus a manifest.

:class:`StreamingDataModule` (JSONL shards, ``index.json``) and :class:`LitDataModule` (LitData
chunks, ``chute.json``) read data that a copy writer (:class:`~chute.datasets.materialize.SourceCopy`)
made from any chute DataModule. The manifest names the splits and carries what the model needs (``model_kwargs``,
``class_names``), the per-sample collate function and, for images, the device-side normalization;
:class:`DescribedDataModule` turns it into the DataModule interface once for both.
"""

from __future__ import annotations

import os
from typing import Any

from typing_extensions import Unpack

from chute.collate import Collate, collate_nested, resolve_collate
from chute.datamodules.base import ChuteDataModule, CommonArgs
from chute.errors import DataError
from chute.transforms.batch import NormalizeBatch


class DescribedDataModule(ChuteDataModule):
    """Base of the DataModules over a described copy (see the module docstring).

    Subclasses implement :meth:`read_meta`, which returns the manifest as a dict with ``splits``
    (split name to sample count) and optionally ``model_kwargs``, ``class_names``, ``collate`` and
    ``normalize`` (``{"mean": [...], "std": [...]}``).

    Args:
        root: Folder (or URL) of the copy.
        train_split, val_split: Split names to train and validate on.
        test_split: Split for test and predict (default: ``val_split``).
        common: The :class:`ChuteDataModule` arguments (:class:`~chute.datamodules.base.CommonArgs`).
    """

    #: The subclass's name for ``root`` in its signature and config (for messages).
    root_argument = "root"

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        train_split: str,
        val_split: str,
        test_split: str | None,
        **common: Unpack[CommonArgs],
    ) -> None:
        super().__init__(**common)
        self.root = os.fspath(root)
        self.split_names = {"train": train_split, "val": val_split, "test": test_split or val_split}
        self.meta: dict[str, Any] | None = None

    def read_meta(self) -> dict[str, Any]:
        raise NotImplementedError

    def prepare_data(self) -> None:
        self.run_prepare(self.root, self.root_argument)

    def setup(self, stage: str | None = None) -> None:
        if self.meta is not None:
            return
        meta = self.read_meta()
        for name in set(self.split_names.values()):  # a missing split fails now, naming what there is
            if name not in meta["splits"]:
                raise DataError(f"'{self.root}' has no '{name}' split (has {sorted(meta['splits'])}).")
            if int(meta["splits"][name]) == 0:
                raise DataError(
                    f"Split '{name}' of '{self.root}' has no samples: write the copy again from a source whose "
                    f"'{name}' split has samples (e.g. a larger val_fraction)."
                )
        normalize = meta.get("normalize")
        if normalize is not None:
            self.batch_transform = NormalizeBatch(normalize["mean"], normalize["std"])
        self.meta = meta

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return dict(self._meta().get("model_kwargs", {}))

    @property
    def class_names(self) -> tuple[str, ...]:
        names = self._meta().get("class_names")
        if names is None:
            raise AttributeError(f"class_names: the description of '{self.root}' records no classes")
        return tuple(names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def num_samples(self, split: str) -> int:
        """Samples in the ``train``, ``val`` or ``test`` split."""
        return int(self._meta()["splits"][self.split_names[split]])

    def _sample_collate(self) -> Collate:
        """The collate function: the DataModule's ``collate_fn``, else the source's, else nested stacking."""
        return self.collate_or(resolve_collate(self._meta().get("collate"), collate_nested))

    def _meta(self) -> dict[str, Any]:
        if self.meta is None:
            raise self.not_set_up_error()
        return self.meta
