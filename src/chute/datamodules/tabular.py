"""``TabularDataModule``: feature and target columns of CSV or Parquet files."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from chute.collate import passthrough
from chute.datamodules.base import ChuteDataModule
from chute.datasets.folder import stratified_split
from chute.datasets.tabular import (
    MissingStrategy,
    Split,
    TableEncoder,
    TabularDataset,
    encode_labels,
    encode_numbers,
    label_classes,
    read_table,
)
from chute.errors import ConfigError, DataError
from chute.loader import LoaderSettings, derive_seed
from chute.samplers import BatchIndexSampler

Task = Literal["classification", "regression"]


class TabularDataModule(ChuteDataModule):
    """Rows of a CSV/Parquet table as ``(features, targets)`` (or ``(features, targets, weights)``) batches.

    The column spec says what is used; every other column is ignored. Numeric columns are imputed
    and standardized and categorical columns one-hot encoded, with statistics and vocabularies fitted
    on the training split only and kept in ``state_dict`` (so a checkpoint encodes new data the same
    way). Whole batches come from one indexed gather (:class:`~chute.datasets.TabularDataset`), not
    per-row ``__getitem__`` + ``default_collate``.

    Args:
        path: Training table (``.csv``, ``.tsv``, optionally ``.gz``, or ``.parquet``).
        target: Target column.
        numeric: Numeric feature columns (``None``: every numeric column that is not otherwise named).
        categorical: Categorical feature columns.
        weight: Optional column of per-sample loss weights (batches then carry a third element).
        task: ``classification`` (targets become class indices) or ``regression`` (float targets).
        val_path: Validation table; without it ``val_fraction`` of ``path`` is held out (stratified
            by class for classification, seeded).
        test_path: Test table (default: test and predict use the validation split).
        val_fraction: Share of ``path`` held out for validation when there is no ``val_path``.
        missing: ``raise`` on missing feature values, or impute with the training ``mean``,
            ``median`` or ``constant`` (``fill_value``); missing categories become ``<missing>``.
        fill_value: Value for ``missing="constant"``.
        standardize: Scale numeric features with the training mean and std.
        unknown_category: ``raise`` on a category absent from training, or ``ignore`` it.
        loader: DataLoader settings.
        seed: Seed for the split, shuffling and worker seeding.
        prepare: Optional callable ``prepare(path)`` that writes the table if missing.
        collate_fn: Collate function or dotted path; it receives whole batches (default: pass through).

    Example:
        >>> from chute.datasets import SklearnTable
        >>> import tempfile
        >>> dm = TabularDataModule(tempfile.mkdtemp() + "/wine.csv", target="cultivar", prepare=SklearnTable("wine"))
        >>> dm.prepare_data(); dm.setup("fit")
        >>> dm.num_features, dm.class_names
        (13, ('class_0', 'class_1', 'class_2'))
        >>> features, targets = next(iter(dm.train_dataloader()))
        >>> features.dtype, tuple(features.shape), targets.dtype
        (torch.float32, (64, 13), torch.int64)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        target: str,
        numeric: Sequence[str] | None = None,
        categorical: Sequence[str] = (),
        weight: str | None = None,
        task: Task = "classification",
        val_path: str | None = None,
        test_path: str | None = None,
        val_fraction: float = 0.2,
        missing: MissingStrategy = "raise",
        fill_value: float = 0.0,
        standardize: bool = True,
        unknown_category: Literal["raise", "ignore"] = "raise",
        loader: LoaderSettings | Mapping[str, Any] | None = None,
        seed: int = 0,
        prepare: Callable[[str], Any] | None = None,
        collate_fn: Callable[[Any], Any] | str | None = None,
    ) -> None:
        super().__init__(loader=loader, seed=seed, prepare=prepare, collate_fn=collate_fn)
        if task not in ("classification", "regression"):
            raise ConfigError("task", task, "must be 'classification' or 'regression'")
        if val_path is None and not 0.0 < val_fraction < 1.0:
            raise ConfigError("val_fraction", val_fraction, "must be in (0, 1) when there is no val_path")
        features = set(categorical) | set(numeric or ())
        for key, column in (("target", target), ("weight", weight)):
            if column is not None and column in features:
                raise ConfigError(key, column, "is also listed as a feature column; a column cannot be both")
        self.path = os.fspath(path)
        self.paths = {"train": self.path, "val": val_path, "test": test_path}
        self.target = target
        self.weight = weight
        self.task: Task = task
        self.val_fraction = val_fraction
        self._numeric = None if numeric is None else list(numeric)
        self._encoder_args = {
            "categorical": list(categorical), "missing": missing, "fill_value": float(fill_value),
            "standardize": standardize, "unknown_category": unknown_category,
        }  # fmt: skip
        # Check the encoding options now, not at setup (numeric columns may be inferred then).
        TableEncoder(numeric=self._numeric if self._numeric is not None else ["<inferred>"], **self._encoder_args)  # type: ignore[arg-type]
        self.encoder: TableEncoder | None = None
        self.classes: tuple[str, ...] | None = None
        self._datasets: dict[str, TabularDataset] = {}
        self._saved_state: dict[str, Any] | None = None
        self._save_plain_hparams(
            path=self.path, target=target, numeric=self._numeric, categorical=list(categorical), weight=weight,
            task=task, val_path=val_path, test_path=test_path, val_fraction=val_fraction, missing=missing,
            fill_value=fill_value, standardize=standardize, unknown_category=unknown_category,
        )  # fmt: skip

    # -- Lightning hooks -------------------------------------------------------------------------

    def prepare_data(self) -> None:
        self._prepare_root(self.path)

    def setup(self, stage: str | None = None) -> None:
        if self._datasets:
            return
        splits = self._read_splits()
        train = splits["train"]
        numeric = self._numeric if self._numeric is not None else self._infer_numeric(train)
        encoder = TableEncoder(numeric=numeric, **self._encoder_args)  # type: ignore[arg-type]
        if self._saved_state is not None:
            encoder.load_state_dict(self._saved_state["encoder"])
            self.classes = tuple(self._saved_state["classes"]) if self._saved_state.get("classes") else None
        else:
            encoder.fit(train)
            self.classes = tuple(label_classes(train, self.target)) if self.task == "classification" else None
        self.encoder = encoder
        self._datasets = {name: self._encode(split) for name, split in splits.items()}

    def train_dataloader(self) -> DataLoader[Any]:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader[Any]:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader[Any]:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader[Any]:
        # A plain batch sampler: Lightning rebuilds the predict loader's sampler to track indices.
        return self._dataloader(self.dataset("test"), train=False, collate_fn=self._collate(passthrough))

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.encoder is not None:
            state.update(
                numeric=list(self.encoder.numeric), encoder=self.encoder.state_dict(),
                classes=list(self.classes) if self.classes is not None else None,
            )  # fmt: skip
        elif self._saved_state is not None:
            state.update(self._saved_state)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Reuse the fitted encoding (statistics, vocabularies, classes) of a checkpoint; call before ``setup``."""
        super().load_state_dict(state_dict)
        if "encoder" in state_dict:
            self._saved_state = {k: state_dict[k] for k in ("numeric", "encoder", "classes")}
            self._numeric = list(state_dict["numeric"])
            if self._datasets:
                self._datasets = {}
                self.setup()

    # -- Public properties -----------------------------------------------------------------------

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return {"num_features": self.num_features, "num_classes": self.num_classes, "task": self.task}

    @property
    def num_features(self) -> int:
        return len(self._encoder().feature_names)

    @property
    def feature_names(self) -> list[str]:
        return self._encoder().feature_names

    @property
    def class_names(self) -> tuple[str, ...]:
        if self.task != "classification":
            raise AttributeError("class_names: a regression task has no classes")
        self._encoder()
        assert self.classes is not None
        return self.classes

    @property
    def num_classes(self) -> int:
        """Number of classes (0 for regression)."""
        return len(self.class_names) if self.task == "classification" else 0

    @property
    def class_counts(self) -> np.ndarray:
        """Training rows per class (index = label)."""
        targets = self.dataset("train").targets.numpy()
        return np.bincount(targets, minlength=self.num_classes)

    def dataset(self, split: str) -> TabularDataset:
        self._encoder()
        return self._datasets[split]

    # -- Internals -------------------------------------------------------------------------------

    def _encoder(self) -> TableEncoder:
        if self.encoder is None:
            raise RuntimeError(
                f"{type(self).__name__} is not set up: call prepare_data() and setup() first "
                "(Lightning's Trainer does both)."
            )
        return self.encoder

    def _loader(self, split: str, train: bool) -> DataLoader[Any]:
        dataset, settings = self.dataset(split), self.loader_settings
        batches = BatchIndexSampler(
            len(dataset),
            settings.batch_size_for(train),
            shuffle=train and settings.shuffle,
            drop_last=train and settings.drop_last,
            seed=derive_seed(self.seed, 5),
        )
        return self._dataloader(dataset, train=train, collate_fn=self._collate(passthrough), batch_sampler=batches)

    def _read_splits(self) -> dict[str, Split]:
        train = Split.whole(read_table(self.path), self.path)
        if self.paths["val"] is not None:
            val = Split.whole(read_table(self.paths["val"]), self.paths["val"])
        else:
            seed = derive_seed(self.seed, 1)
            if self.task == "classification":
                labels = np.asarray(train.strings(self.target), dtype=object)
                keep, held = stratified_split(labels, self.val_fraction, seed)
            else:
                order = np.random.default_rng(seed).permutation(train.table.num_rows)
                n_val = max(1, round(len(order) * self.val_fraction))
                keep, held = np.sort(order[n_val:]), np.sort(order[:n_val])
            train, val = train.take(keep), train.take(held)
        test = val
        if self.paths["test"] is not None:
            test = Split.whole(read_table(self.paths["test"]), self.paths["test"])
        return {"train": train, "val": val, "test": test}

    def _infer_numeric(self, train: Split) -> list[str]:
        taken = {self.target, self.weight, *self._encoder_args["categorical"]}  # type: ignore[misc]
        numeric: list[str] = []
        skipped: list[str] = []
        for name, kind in zip(train.table.column_names, train.table.schema.types, strict=True):
            if name in taken:
                continue
            usable = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
            (numeric if usable else skipped).append(name)
        if skipped:
            rank_zero_info(f"TabularDataModule: ignoring non-numeric columns {skipped} (list them as categorical).")
        if not numeric and not self._encoder_args["categorical"]:
            raise DataError(f"'{train.source}' has no numeric feature columns besides the target {self.target!r}.")
        return numeric

    def _encode(self, split: Split) -> TabularDataset:
        encoder = self._encoder()
        features = encoder.encode(split)
        if self.task == "classification":
            assert self.classes is not None
            targets = encode_labels(split, self.target, self.classes)
        else:
            targets = encode_numbers(split, self.target)
        weights = encode_numbers(split, self.weight, "Weight") if self.weight is not None else None
        if weights is not None and (weights < 0).any():
            row = int(np.flatnonzero(weights < 0)[0])
            raise DataError(f"Weight column {self.weight!r} is negative at {split.where(row)}.")
        return TabularDataset(features, targets, weights)
