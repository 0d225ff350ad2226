"""``TableDataModuleBase``: reading, splitting and train-only encoding shared by the table DataModules."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import Dataset
from typing_extensions import Unpack

from chute.collate import passthrough
from chute.datamodules.base import ChuteDataModule, CommonArgs
from chute.datasets.folder_index import stratified_split
from chute.datasets.table_read import Split, check_encoding, is_number, read_split
from chute.datasets.tabular import MissingStrategy, TableEncoder, check_labels_present, encode_split, label_classes
from chute.errors import ConfigError, DataError
from chute.loader import Loader, Stream, derive_seed

Task = Literal["classification", "regression"]
UnknownCategory = Literal["raise", "ignore"]


class FittedEncoding(ChuteDataModule):
    """What the table DataModules (files and SQL) share about their encoding.

    The :class:`~chute.datasets.tabular.TableEncoder` settings are checked at construction; the
    encoder is fitted on the training rows at ``setup`` (or taken from a checkpoint), saved in every
    checkpoint with the numeric columns and the classes, and restored before ``setup``, so a resumed
    or reloaded run encodes exactly as the run that fitted it. A subclass says what it fitted
    (:meth:`_fitted`) and how to forget it (:meth:`_forget_fit`); ``setup`` starts from
    :meth:`_encoder`, which holds a checkpoint's fit when there is one.
    """

    def __init__(
        self,
        *,
        numeric: Sequence[str] | None,
        categorical: Sequence[str],
        missing: MissingStrategy,
        fill_value: float,
        standardize: bool,
        unknown_category: UnknownCategory,
        **common: Unpack[CommonArgs],
    ) -> None:
        super().__init__(**common)
        self._numeric = None if numeric is None else list(numeric)
        self.categorical = list(categorical)
        self._encoder_args = {
            "categorical": self.categorical, "missing": missing, "fill_value": float(fill_value),
            "standardize": standardize, "unknown_category": unknown_category,
        }  # fmt: skip
        self._saved_state: dict[str, Any] | None = None  # a checkpoint's fit, for the next setup
        self._encoder(self._numeric if self._numeric is not None else ["?"])  # check now: numeric may be inferred

    def _encoder(self, numeric: Sequence[str]) -> tuple[TableEncoder, Any]:
        """An encoder of ``numeric`` and the settings' other columns, and the saved classes: fitted
        already when a checkpoint gave its state (then ``numeric`` is the checkpoint's), else not
        (classes ``None``)."""
        encoder = TableEncoder(numeric=list(numeric), **self._encoder_args)  # type: ignore[arg-type]
        if self._saved_state is None:
            return encoder, None
        encoder.load_state_dict(self._saved_state["encoder"])
        return encoder, self._saved_state["classes"]

    def _fitted(self) -> tuple[TableEncoder, Any] | None:
        """The encoder ``setup`` fitted and its classes (plain lists and dicts); ``None`` before."""
        raise NotImplementedError

    def _forget_fit(self) -> bool:
        """Drop what ``setup`` fitted (so it runs again); whether there was anything."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        fitted = self._fitted()
        if fitted is not None:
            encoder, classes = fitted
            state.update(numeric=list(encoder.numeric), encoder=encoder.state_dict(), classes=classes)
        elif self._saved_state is not None:
            state.update(self._saved_state)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Reuse a checkpoint's fitted encoding (statistics, vocabularies, classes); call before ``setup``."""
        super().load_state_dict(state_dict)
        if "encoder" in state_dict:
            self._saved_state = {k: state_dict[k] for k in ("numeric", "encoder", "classes")}
            self._numeric = list(state_dict["numeric"])
            if self._forget_fit():
                self.setup("fit")


class TableDataModuleBase(FittedEncoding):
    """What the table DataModules share: reading, splitting, train-only encoding and batched loaders.

    ``tasks`` maps a task name to ``(column, "classification" | "regression")``. Subclasses decide
    what a batch looks like (:meth:`make_dataset`) and what the model is told (``model_kwargs``).
    :class:`TabularDataModule` documents the other arguments.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        tasks: Mapping[str, tuple[str, Task]],
        numeric: Sequence[str] | None,
        categorical: Sequence[str],
        weight: str | None,
        val_path: str | None,
        test_path: str | None,
        val_fraction: float,
        missing: MissingStrategy,
        fill_value: float,
        standardize: bool,
        unknown_category: UnknownCategory,
        encoding: str = "utf-8",
        predict_path: str | None = None,
        **common: Unpack[CommonArgs],
    ) -> None:
        super().__init__(
            numeric=numeric, categorical=categorical, missing=missing, fill_value=fill_value, standardize=standardize,
            unknown_category=unknown_category, **common,
        )  # fmt: skip
        if val_path is None and not 0.0 < val_fraction < 1.0:
            raise ConfigError("val_fraction", val_fraction, "must be in (0, 1) when there is no val_path")
        if not tasks:
            raise ConfigError("tasks", {}, "needs at least one target")
        features = set(categorical) | set(numeric or ())
        for key, (column, kind) in self.task_keys(tasks).items():
            if kind not in ("classification", "regression"):
                raise ConfigError(key[1], kind, "must be 'classification' or 'regression'")
            if column in features:
                raise ConfigError(key[0], column, "is also listed as a feature column; a column cannot be both")
        if weight is not None and weight in features:
            raise ConfigError("weight", weight, "is also listed as a feature column; a column cannot be both")
        check_encoding(encoding)
        self.encoding = encoding
        self.path = os.fspath(path)
        self.paths = {"train": self.path, "val": val_path, "test": test_path, "predict": predict_path}
        self.predict_rows: np.ndarray | None = None  # the predict file's row numbers, in prediction order
        self.tasks: dict[str, tuple[str, Task]] = {name: (column, kind) for name, (column, kind) in tasks.items()}
        self.weight = weight
        self.val_fraction = val_fraction
        self.encoder: TableEncoder | None = None
        self.task_classes: dict[str, tuple[str, ...]] = {}
        self._quantity_hint = ""  # a classification target that looks like a quantity (set at setup)
        self._datasets: dict[str, Dataset[Any]] = {}

    def task_keys(self, tasks: Mapping[str, tuple[str, Task]]) -> dict[tuple[str, str], tuple[str, Task]]:
        """Config keys naming each task's column and type, for error messages."""
        return {(f"tasks.{n}.column", f"tasks.{n}.type"): spec for n, spec in tasks.items()}

    def make_dataset(
        self, features: np.ndarray, targets: dict[str, np.ndarray], weights: np.ndarray | None
    ) -> Dataset[Any]:
        raise NotImplementedError

    # -- Lightning hooks -------------------------------------------------------------------------

    def prepare_data(self) -> None:
        self.run_prepare(self.path, "path")

    def setup(self, stage: str | None = None) -> None:
        if self._datasets:
            return
        splits = self._read_splits()
        train = splits["train"]
        numeric = self._numeric if self._numeric is not None else self._infer_numeric(train)
        encoder, saved_classes = self._encoder(numeric)
        if saved_classes is not None:
            self.task_classes = {k: tuple(v) for k, v in saved_classes.items()}
        else:
            encoder.fit(train)
            self.task_classes = {
                name: tuple(label_classes(train, column))
                for name, (column, kind) in self.tasks.items()
                if kind == "classification"
            }
            self._quantity_hint = self._quantities_as_classes(train)
            if self._quantity_hint:
                rank_zero_warn(self._quantity_hint)
        self.encoder = encoder
        self._datasets = {name: self._encode(split) for name, split in splits.items()}
        self.check_imbalance()

    def _quantities_as_classes(self, train: Split) -> str:
        """A warning for each classification target that looks like a quantity to predict: every label
        a number, and fractions among them or about one row per class (a price, a length read with
        the default ``task``); empty when none does."""
        keys = {spec: key for key, spec in self.task_keys(self.tasks).items()}
        rows = train.table.num_rows
        found = []
        for name, classes in self.task_classes.items():
            column, kind = self.tasks[name]
            if len(classes) < 20 or not all(is_number(c) for c in classes):
                continue
            fractions = [c for c in classes if not float(c).is_integer()]
            if fractions or len(classes) > rows / 4:
                pool = fractions or list(classes)
                example = pool[len(pool) // 2]
                found.append(
                    f"Target column {column!r} has {len(classes)} classes in {rows} training rows, all numbers "
                    f"({example!r} among them): if it is a quantity to predict, set {keys[column, kind][1]}=regression."
                )
        return " ".join(found)

    def empty_split_hint(self, split: str) -> str:
        return " ".join(filter(None, [super().empty_split_hint(split), self._quantity_hint]))

    def _fitted(self) -> tuple[TableEncoder, Any] | None:
        if self.encoder is None:
            return None
        return self.encoder, {name: list(values) for name, values in self.task_classes.items()}

    def _forget_fit(self) -> bool:
        was_set_up = bool(self._datasets)
        self._datasets, self.encoder = {}, None
        return was_set_up

    # -- Public properties -----------------------------------------------------------------------

    @property
    def num_features(self) -> int:
        return len(self._fitted_encoder().feature_names)

    @property
    def feature_names(self) -> list[str]:
        return self._fitted_encoder().feature_names

    def predict_dataloader(self) -> Loader:
        if self.paths["predict"] is None:
            return super().predict_dataloader()
        return self._not_empty(self.split_dataloader("predict", train=False), "predict")

    def dataset(self, split: str) -> Any:
        """The ``train``, ``val``, ``test`` or ``predict`` split (encoded)."""
        self._fitted_encoder()
        if split == "predict" and self.paths["predict"] is not None and split not in self._datasets:
            # read when first asked for: training does not need the file to exist yet
            self._datasets[split] = self._encode_unlabeled(self._read(split))
        return self._datasets[split]

    # -- Internals -------------------------------------------------------------------------------

    def _fitted_encoder(self) -> TableEncoder:
        if self.encoder is None:
            raise self.not_set_up_error()
        return self.encoder

    def split_dataloader(self, split: str, train: bool) -> Loader:
        return self.build_dataloader(self.dataset(split), train=train, collate_fn=self.collate_or(passthrough))

    def _read(self, split: str, words_missing: frozenset[str] | None = None) -> Split:
        """The table file of ``split``; rows with a wrong field count raise or, with ``skip``, are dropped.
        ``words_missing``: the training file's reading of ``NA`` in its text columns (:class:`Split`)."""
        path = self.paths[split]
        assert path is not None
        # Categories and class labels as written, so that '007' in one file is '007' in every file.
        labels = [column for column, kind in self.tasks.values() if kind == "classification"]
        text = [*self.categorical, *(labels if split != "predict" else ())]  # rows to predict: no labels
        return read_split(path, self.bad_policy(split, "row", fresh=True), self.encoding, text, words_missing)

    def _read_splits(self) -> dict[str, Split]:
        train = self._read("train")
        if self.paths["val"] is not None:
            val = self._read("val", train.words_missing)
        else:
            seed = derive_seed(self.seed, Stream.SPLIT)
            stratify = next((column for column, kind in self.tasks.values() if kind == "classification"), None)
            if stratify is not None:  # by the first classification target
                labels = np.asarray(check_labels_present(train, stratify), dtype=object)
                keep, held = stratified_split(labels, self.val_fraction, seed)
            else:
                order = np.random.default_rng(seed).permutation(train.table.num_rows)
                n_val = max(1, round(len(order) * self.val_fraction))
                keep, held = np.sort(order[n_val:]), np.sort(order[:n_val])
            train, val = train.take(keep), train.take(held)
        test = val
        if self.paths["test"] is not None:
            test = self._read("test", train.words_missing)
        return {"train": train, "val": val, "test": test}

    def _infer_numeric(self, train: Split) -> list[str]:
        taken = {column for column, _ in self.tasks.values()} | {self.weight}
        return infer_numeric(train, taken, self.categorical, type(self).__name__)

    def _encode_unlabeled(self, split: Split) -> Dataset[Any]:
        """Rows to predict on: features encoded as the training split's, targets ``-1`` (class) or NaN
        (regression) whatever the file holds, no weights."""
        features = self._fitted_encoder().encode(split)
        rows = len(features)
        targets = {
            name: np.full(rows, -1, dtype=np.int64) if kind == "classification" else np.full(rows, np.nan, np.float32)
            for name, (_, kind) in self.tasks.items()
        }
        self.predict_rows = split.rows
        return self.make_dataset(features, targets, None)

    def _encode(self, split: Split) -> Dataset[Any]:
        encoded = encode_split(split, self._fitted_encoder(), self.tasks, self.task_classes, self.weight)
        return self.make_dataset(*encoded)


def infer_numeric(train: Split, taken: set[str | None], categorical: Sequence[str], owner: str) -> list[str]:
    """The numeric feature columns of ``train``: every column not ``taken`` (targets, weight) or
    ``categorical`` that holds numbers; other columns are logged as ignored."""
    numeric: list[str] = []
    skipped: list[str] = []
    for name, kind in zip(train.table.column_names, train.table.schema.types, strict=True):
        if name in taken or name in categorical:
            continue
        usable = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
        # A column of numbers with a few text cells reads as text: it is numeric, and encoding it
        # names the bad cells (dropping it silently would train on fewer features than the file has).
        (numeric if usable or _mostly_numbers(train.strings(name)) else skipped).append(name)
    if skipped:
        rank_zero_info(f"{owner}: ignoring non-numeric columns {skipped} (list them as categorical).")
    if not numeric and not categorical:
        raise DataError(f"'{train.source}' has no numeric feature columns besides the targets.")
    return numeric


def _mostly_numbers(values: list[str | None]) -> bool:
    """Whether most non-empty cells of a text column parse as numbers."""
    present = [v for v in values if v is not None and v.strip()]
    numbers = sum(is_number(v) for v in present)
    return bool(present) and numbers > len(present) / 2
