"""Tables from CSV or Parquet, encoded once into numpy arrays, served a whole batch at a time.

Reading and checking happen once, at ``setup``; what the DataLoader touches afterwards is a float32
feature matrix and a target vector. :class:`TabularDataset` implements ``__getitems__``, so the
DataLoader asks for a batch's indices in one call and gets tensors back from one gather: no
per-row Python and no ``default_collate`` over thousands of tiny tensors.

Reading the files into a :class:`~chute.datasets.table_read.Split` (CSV/Parquet with typed
columns, errors naming file, row and column) is :mod:`chute.datasets.table_read`; this module
encodes splits (statistics fitted on the training split only) and serves them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import Dataset

from chute.datasets.table_read import Split, is_number
from chute.errors import ConfigError, DataError

MissingStrategy = Literal["raise", "mean", "median", "constant"]
MISSING_STRATEGIES = ("raise", "mean", "median", "constant")
MISSING_CATEGORY = "<missing>"


@dataclass
class TableEncoder:
    """Column spec plus the statistics fitted on the training split only (no leakage from val/test).

    Numeric columns are imputed (``missing``) and standardized with the training mean and std;
    categorical columns are one-hot encoded over the training vocabulary. Everything fitted is plain
    data, so :meth:`state_dict` goes into checkpoints and reloads with ``weights_only=True``.

    Args:
        numeric: Numeric feature columns.
        categorical: Categorical feature columns.
        missing: ``raise`` on a missing feature value, or impute numeric columns with the training
            ``mean``, ``median`` or ``constant`` (``fill_value``); with imputation a missing category
            becomes its own category ``<missing>`` (all zeros in a split read later where training had
            none: missing is allowed, not an unknown category).
        fill_value: Value for ``missing="constant"``.
        standardize: Scale numeric columns to zero mean and unit variance.
        unknown_category: ``raise`` on a category not seen in training, or ``ignore`` it (all-zero one-hot).
    """

    numeric: list[str]
    categorical: list[str] = field(default_factory=list)
    missing: MissingStrategy = "raise"
    fill_value: float = 0.0
    standardize: bool = True
    unknown_category: Literal["raise", "ignore"] = "raise"
    fill: list[float] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    vocab: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.missing not in MISSING_STRATEGIES:
            raise ConfigError("missing", self.missing, f"must be one of {list(MISSING_STRATEGIES)}")
        if self.unknown_category not in ("raise", "ignore"):
            raise ConfigError("unknown_category", self.unknown_category, "must be 'raise' or 'ignore'")
        clash = set(self.numeric) & set(self.categorical)
        if clash:
            raise ConfigError("categorical", sorted(clash), "columns cannot be both numeric and categorical")
        if not self.numeric and not self.categorical:
            raise ConfigError("numeric", self.numeric, "no feature columns: list numeric and/or categorical columns")

    @property
    def fitted(self) -> bool:
        return len(self.mean) == len(self.numeric) and len(self.vocab) == len(self.categorical)

    @property
    def feature_names(self) -> list[str]:
        names = list(self.numeric)
        for column in self.categorical:
            names += [f"{column}={value}" for value in self.vocab[column]]
        return names

    def fit(self, split: Split) -> None:
        self.fill, self.mean, self.std, self.vocab = [], [], [], {}
        for name in self.numeric:
            values = split.floats(name)
            self._check_missing(split, name, np.isnan(values))
            present = values[~np.isnan(values)]
            if present.size == 0:
                raise DataError(f"Column {name!r} has no values in the training split of '{split.source}'.")
            fill = {"mean": present.mean(), "median": np.median(present), "constant": self.fill_value}.get(
                self.missing, 0.0
            )
            filled = np.where(np.isnan(values), fill, values)
            std = float(filled.std()) if self.standardize else 1.0
            self.fill.append(float(fill))
            self.mean.append(float(filled.mean()) if self.standardize else 0.0)
            self.std.append(std if std > 1e-12 else 1.0)  # a constant column stays 0 instead of NaN
        for name in self.categorical:
            labels = split.strings(name)
            self._check_missing(split, name, np.array([v is None for v in labels]))
            seen = {MISSING_CATEGORY if v is None else v for v in labels}
            self.vocab[name] = sorted(seen)

    def encode(self, split: Split) -> np.ndarray:
        """Float32 features ``(rows, len(feature_names))`` for ``split``."""
        if not self.fitted:
            raise RuntimeError("TableEncoder.encode() before fit() or load_state_dict().")
        blocks = [np.empty((split.table.num_rows, 0), dtype=np.float32)]
        if self.numeric:
            numeric = np.stack([split.floats(name) for name in self.numeric], axis=1)
            for j, name in enumerate(self.numeric):
                missing = np.isnan(numeric[:, j])
                self._check_missing(split, name, missing)
                numeric[missing, j] = self.fill[j]
            blocks.append(((numeric - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32))
        for name in self.categorical:
            blocks.append(self._one_hot(split, name))
        return np.ascontiguousarray(np.concatenate(blocks, axis=1))

    def _one_hot(self, split: Split, name: str) -> np.ndarray:
        vocab = self.vocab[name]
        lookup = {v: i for i, v in enumerate(vocab)}
        values = split.strings(name)
        self._check_missing(split, name, np.array([v is None for v in values]))
        codes = np.array([lookup.get(MISSING_CATEGORY if v is None else v, -1) for v in values], dtype=np.int64)
        # A missing value is allowed here (imputation is on): without a `<missing>` in training it is
        # all zeros, as an ignored category is, not "category None that the training split does not have".
        unknown = np.flatnonzero((codes < 0) & np.array([v is not None for v in values], dtype=bool))
        if unknown.size and self.unknown_category == "raise":
            first = int(unknown[0])
            hint = _written_otherwise(values[first], vocab)
            raise DataError(
                f"Column {name!r} has category {values[first]!r} at {split.where(first)} that the training split "
                f"does not have ({unknown.size} such rows; known: {vocab[:10]}).{hint} Set "
                "unknown_category='ignore' to encode unseen categories as all zeros."
            )
        out = np.zeros((len(values), len(vocab)), dtype=np.float32)
        known = codes >= 0
        out[np.flatnonzero(known), codes[known]] = 1.0
        return out

    def _check_missing(self, split: Split, name: str, missing: np.ndarray) -> None:
        if self.missing == "raise" and missing.any():
            first = int(np.flatnonzero(missing)[0])
            raise DataError(
                f"Column {name!r} has {int(missing.sum())} missing values in '{split.source}' (first at "
                f"{split.where(first)}). Set missing to 'mean', 'median' or 'constant' to impute them."
            )

    def state_dict(self) -> dict[str, Any]:
        return {"fill": self.fill, "mean": self.mean, "std": self.std, "vocab": self.vocab}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fill = [float(v) for v in state["fill"]]
        self.mean = [float(v) for v in state["mean"]]
        self.std = [float(v) for v in state["std"]]
        self.vocab = {str(k): [str(v) for v in vs] for k, vs in state["vocab"].items()}


def check_labels_present(split: Split, column: str) -> list[str]:
    """The labels of ``column``; a missing (empty or NaN) one is an error naming the row."""
    values = split.strings(column)
    missing = [i for i, v in enumerate(values) if v is None]
    if missing:
        raise DataError(
            f"Target column {column!r} is missing at {split.where(missing[0])} ({len(missing)} such rows): "
            "every row needs a label (drop or fill those rows)."
        )
    return values  # type: ignore[return-value]


def encode_labels(split: Split, column: str, classes: Sequence[str]) -> np.ndarray:
    """Class indices of ``column`` over ``classes``; a missing or unknown label is an error naming the row."""
    raw = split.column(column)
    if pa.types.is_string(raw.type) or pa.types.is_large_string(raw.type):  # one lookup in C (batches of SQL rows)
        found = pc.index_in(raw, value_set=pa.array(list(classes), raw.type))
        codes = pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        codes[raw.is_null().to_numpy(zero_copy_only=False)] = -2
    else:
        lookup = {c: i for i, c in enumerate(classes)}
        codes = np.array([lookup.get(v, -1) if v is not None else -2 for v in split.strings(column)], dtype=np.int64)
    bad = np.flatnonzero(codes < 0)
    if bad.size:
        values = split.strings(column)
        first = int(bad[0])
        if codes[first] == -2:
            check_labels_present(split, column)  # the same message as for the training file
        what = f"is {values[first]!r}, a class the training split lacks"
        raise DataError(
            f"Target column {column!r} {what} at {split.where(first)} ({bad.size} such rows; classes: "
            f"{list(classes)[:10]}).{_written_otherwise(values[first], classes)}"
        )
    return codes


def _written_otherwise(value: str | None, known: Sequence[str]) -> str:
    """A hint when ``value`` is a known class or category written another way: a number (``0.0`` in a
    CSV file, ``0`` from a Parquet float column) or a truth value (``false`` against ``False``)."""
    if value is None:
        return ""
    same = None
    if is_number(value) and math.isfinite(float(value)):
        same = next((k for k in known if is_number(k) and float(k) == float(value)), None)
    elif value.lower() in ("true", "false"):
        same = next((k for k in known if k.lower() == value.lower()), None)
    if same is None or same == value:
        return ""
    return (
        f" The training split has {same!r}, the same value written another way (a file of another format, or "
        "another program, wrote it): write it the same way in every file."
    )


def label_classes(split: Split, column: str) -> list[str]:
    """Sorted class names of ``column`` in ``split``: numbers (a numeric column, or text whose every
    label is a number, such as ``2``, ``10``, ``007``) sort numerically, equal numbers by their text."""
    raw = split.column(column)
    values = set(v for v in split.strings(column) if v is not None)
    numeric = pa.types.is_integer(raw.type) or pa.types.is_floating(raw.type)
    if numeric or all(is_number(v) and math.isfinite(float(v)) for v in values):
        return sorted(values, key=lambda v: (float(v), v))
    return sorted(values)


def encode_numbers(split: Split, column: str, what: str = "Target", setting: str | None = None) -> np.ndarray:
    """A number per row of ``column`` (a regression target, a weight); one that is not a number names
    its row, and ``setting``, the one that would read the column as classes instead."""
    advice = f"or set {setting}=classification if {column!r} holds classes" if setting else "as every row needs one"
    values = split.floats(column, f"{what} column {column!r} needs numbers: fix the value, {advice}.")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise DataError(
            f"{what} column {column!r} is missing or not finite at {split.where(int(bad[0]))} ({bad.size} such rows)."
        )
    return values.astype(np.float32)


def encode_split(
    split: Split,
    encoder: TableEncoder,
    tasks: Mapping[str, tuple[str, str]],
    classes: Mapping[str, Sequence[str]],
    weight: str | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
    """Features, targets per task and sample weights of ``split``: what every table source feeds a model.

    ``tasks`` maps a task name to ``(column, "classification" | "regression")``; ``classes`` holds
    each classification task's class names. Every bad value is a :class:`DataError` naming the
    source, the row (or key) and the column.
    """
    features = encoder.encode(split)
    targets = {}
    for name, (column, kind) in tasks.items():
        if kind == "classification":
            targets[name] = encode_labels(split, column, classes[name])
        else:
            targets[name] = encode_numbers(split, column, setting="task" if name == "target" else f"tasks.{name}.type")
    weights = encode_numbers(split, weight, "Weight") if weight is not None else None
    if weights is not None and (weights < 0).any():
        row = int(np.flatnonzero(weights < 0)[0])
        raise DataError(f"Weight column {weight!r} is negative at {split.where(row)}.")
    return features, targets, weights


class TabularDataset(Dataset[tuple[torch.Tensor, ...]]):
    """Rows of encoded features and targets (and optional sample weights), fetched a batch at a time.

    ``dataset[i]`` gives one row; ``dataset.__getitems__(indices)`` (what the DataLoader calls) gives
    the whole batch as ``(features, targets[, weights])`` tensors from one indexed gather. Use
    :func:`chute.collate.passthrough` (the TabularDataModule's default) as the collate function.

    Example:
        >>> ds = TabularDataset(np.eye(3, dtype=np.float32), np.array([0, 1, 2]))
        >>> x, y = ds.__getitems__([2, 0])
        >>> x.tolist(), y.tolist()
        ([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], [2, 0])
    """

    def __init__(self, features: np.ndarray, targets: np.ndarray, weights: np.ndarray | None = None) -> None:
        if len(features) != len(targets) or (weights is not None and len(weights) != len(targets)):
            raise ValueError("features, targets and weights need the same number of rows")
        self.features = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        self.targets = torch.from_numpy(np.ascontiguousarray(targets))
        self.weights = None if weights is None else torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        # Clone: a view would send the whole shared table through worker IPC with each row.
        return tuple(t.clone() for t in self._take(index))

    def __getitems__(self, indices: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._take(torch.as_tensor(indices, dtype=torch.int64))

    def _take(self, index: Any) -> tuple[torch.Tensor, ...]:
        out = (self.features[index], self.targets[index])
        return out if self.weights is None else (*out, self.weights[index])


class MultiTaskDataset(Dataset[dict[str, Any]]):
    """Encoded features with several named targets; batches are ``{"inputs", "targets": {name: ...}}``.

    Like :class:`TabularDataset`, ``__getitems__`` gathers a whole batch at once.

    Example:
        >>> ds = MultiTaskDataset(np.eye(2, dtype=np.float32), {"a": np.array([0, 1]), "b": np.array([0.5, 2.0])})
        >>> batch = ds.__getitems__([1])
        >>> batch["inputs"].tolist(), {k: v.tolist() for k, v in batch["targets"].items()}
        ([[0.0, 1.0]], {'a': [1], 'b': [2.0]})
    """

    def __init__(self, features: np.ndarray, targets: dict[str, np.ndarray], weights: np.ndarray | None = None) -> None:
        if any(len(t) != len(features) for t in targets.values()):
            raise ValueError("every target needs one value per feature row")
        self.features = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        self.targets = {name: torch.from_numpy(np.ascontiguousarray(t)) for name, t in targets.items()}
        self.weights = None if weights is None else torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        batch = self._take(index)
        return {
            k: v.clone() if isinstance(v, torch.Tensor) else {n: t.clone() for n, t in v.items()}
            for k, v in batch.items()
        }

    def __getitems__(self, indices: Sequence[int] | torch.Tensor) -> dict[str, Any]:
        return self._take(torch.as_tensor(indices, dtype=torch.int64))

    def _take(self, index: Any) -> dict[str, Any]:
        batch: dict[str, Any] = {
            "inputs": self.features[index],
            "targets": {name: t[index] for name, t in self.targets.items()},
        }
        if self.weights is not None:
            batch["weights"] = self.weights[index]
        return batch
