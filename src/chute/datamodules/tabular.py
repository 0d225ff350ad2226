"""``TabularDataModule``: feature and target columns of CSV or Parquet files."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from typing_extensions import Unpack

from chute.datamodules.base import CommonArgs
from chute.datamodules.table import TableDataModuleBase, Task, UnknownCategory
from chute.datasets.table_read import separator_hint, table_columns
from chute.datasets.tabular import MissingStrategy, TabularDataset
from chute.errors import ConfigError, DataError


class TabularDataModule(TableDataModuleBase):
    """Rows of a CSV/Parquet table as ``(features, targets)`` (or ``(features, targets, weights)``) batches.

    The column spec says what is used; every other column is ignored. Numeric columns are imputed
    and standardized and categorical columns one-hot encoded, with statistics and vocabularies fitted
    on the training split only and kept in ``state_dict`` (so a checkpoint encodes new data the same
    way). Whole batches come from one indexed gather (:class:`~chute.datasets.TabularDataset`), not
    per-row ``__getitem__`` + ``default_collate``.

    Args:
        path: Training table (``.csv``, ``.tsv``, optionally ``.gz``, or ``.parquet``).
        target: Target column. ``None`` (the default) takes the column named ``target``, ``label``,
            ``class`` or ``y`` (in that order, any case), as tables that follow the common
            conventions name it; a table without one is an error listing its columns.
        numeric: Numeric feature columns (``None``: every numeric column that is not otherwise named).
        categorical: Categorical feature columns.
        weight: Optional column of per-sample loss weights (batches then carry a third element).
        task: ``classification`` (targets become class indices) or ``regression`` (float targets).
        val_path: Validation table; without it ``val_fraction`` of ``path`` is held out (stratified
            by class for classification, seeded).
        test_path: Test table (default: test and predict use the validation split).
        predict_path: Table of rows without labels (the same feature columns; target and weight
            columns, if any, are ignored) that ``predict`` reads instead of the test split, encoded
            as the training split, when first asked for; :attr:`predict_rows` holds their row
            numbers in the file (1-based, the header not counted), in the order of the predictions.
            Their target in the batch is ``-1`` (classification) or NaN.
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
        imbalance: Class-imbalance strategy (classification only).
        on_error: A CSV row with the wrong number of fields: ``raise`` names the file, the line and the
            field counts; ``skip`` drops the row, counts it (``bad_samples``) and logs its line.
        max_bad_fraction: With ``skip``, raise when more than this share of a file's rows is bad (for
            files of fewer than 100 rows, more than ``max_bad_fraction * 100`` rows).
        encoding: The CSV files' text encoding (``utf-8``; e.g. ``latin-1`` or ``cp1252`` for files from
            older spreadsheets). Text that does not decode is an error naming the row and column.

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
        target: str | None = None,
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
        unknown_category: UnknownCategory = "raise",
        encoding: str = "utf-8",
        predict_path: str | None = None,
        **common: Unpack[CommonArgs],
    ) -> None:
        super().__init__(
            path, tasks={"target": (target, task)},  # type: ignore[dict-item]  # None: found at setup
            numeric=numeric, categorical=categorical, weight=weight,
            val_path=val_path, test_path=test_path, val_fraction=val_fraction, missing=missing,
            fill_value=fill_value, standardize=standardize, unknown_category=unknown_category, encoding=encoding,
            predict_path=predict_path, **common,
        )  # fmt: skip
        self.target = target
        self.task: Task = task
        self.save_plain_hyperparameters()

    #: Column names taken as the target when ``target`` is not given, in this order (any case).
    TARGET_NAMES = ("target", "label", "class", "y")

    def setup(self, stage: str | None = None) -> None:
        if self.target is None:
            target = self._conventional_target()
            if target in (*(self._numeric or ()), *self.categorical):
                raise ConfigError(
                    "target", None, f"found '{target}', which is listed as a feature column; name the target"
                )
            self.target = target
            self.tasks = {"target": (target, self.task)}
        super().setup(stage)

    def _conventional_target(self) -> str:
        """The first of :data:`TARGET_NAMES` among the training table's columns (read from its header)."""
        columns = table_columns(self.paths["train"], self.encoding)  # type: ignore[arg-type]
        by_name = {c.lower(): c for c in reversed(columns)}  # any case; the first such column
        for name in self.TARGET_NAMES:
            if name in columns:  # written exactly so: preferred over another case of the same name
                return name
            if name in by_name:
                return by_name[name]
        source = self.paths["train"]
        assert source is not None
        separator = separator_hint(columns, source)
        if separator is not None:
            raise DataError(f"'{source}' has one column, {columns[0]!r}. {separator}")
        raise ConfigError(
            "target",
            None,
            f"'{source}' has no column named {' / '.join(self.TARGET_NAMES)}; "
            f"name the target column (its columns: {', '.join(columns)})",
        )

    def task_keys(self, tasks: Mapping[str, tuple[str, Task]]) -> dict[tuple[str, str], tuple[str, Task]]:
        return {("target", "task"): next(iter(tasks.values()))}

    def make_dataset(
        self, features: np.ndarray, targets: dict[str, np.ndarray], weights: np.ndarray | None
    ) -> TabularDataset:
        return TabularDataset(features, targets["target"], weights)

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return {"num_features": self.num_features, "num_classes": self.num_classes, "task": self.task}

    @property
    def classes(self) -> tuple[str, ...] | None:
        """Class names of the target (``None`` for regression or before ``setup``)."""
        return self.task_classes.get("target")

    @property
    def class_names(self) -> tuple[str, ...]:
        if self.task != "classification":
            raise AttributeError("class_names: a regression task has no classes")
        self._fitted_encoder()
        return self.task_classes["target"]

    @property
    def num_classes(self) -> int:
        """Number of classes (0 for regression)."""
        return len(self.class_names) if self.task == "classification" else 0

    def class_labels(self) -> tuple[np.ndarray, int, tuple[str, ...]] | None:
        if self.task != "classification":
            return None
        return self.dataset("train").targets.numpy(), self.num_classes, self.class_names

    @property
    def class_counts(self) -> np.ndarray:
        """Training rows per class (index = label)."""
        targets = self.dataset("train").targets.numpy()
        return np.bincount(targets, minlength=self.num_classes)

    def dataset(self, split: str) -> TabularDataset:
        """The ``train``, ``val`` or ``test`` split (encoded)."""
        dataset = super().dataset(split)
        assert isinstance(dataset, TabularDataset)
        return dataset
