"""Tables from CSV or Parquet, encoded once into numpy arrays, served a whole batch at a time.

Reading and checking happen once, at ``setup``; what the DataLoader touches afterwards is a float32
feature matrix and a target vector. :class:`TabularDataset` implements ``__getitems__``, so the
DataLoader asks for a batch's indices in one call and gets tensors back from one gather: no
per-row Python and no ``default_collate`` over thousands of tiny tensors.

Over 300 lines because reading (CSV/Parquet with typed columns), checking (naming file, row and
column) and train-only encoding are one pipeline over the same ``Split`` object.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import Dataset

from chute.bad_samples import BadSamples
from chute.datasets.text_files import wide_encoding
from chute.errors import ConfigError, DataError

MissingStrategy = Literal["raise", "mean", "median", "constant"]
MISSING_STRATEGIES = ("raise", "mean", "median", "constant")
MISSING_CATEGORY = "<missing>"
_BLOCK = 1 << 20  # pyarrow's default CSV read block; grown for files with longer rows


def read_table(
    path: str | os.PathLike[str], bad_samples: BadSamples | None = None, encoding: str = "utf-8"
) -> pa.Table:
    """Read a ``.csv``/``.tsv`` (optionally ``.gz``) or ``.parquet`` file; errors name the file.

    A CSV row with the wrong number of fields raises naming the file, the line and the field counts,
    or with ``bad_samples`` skipping (``on_error="skip"``) is dropped, counted and logged;
    :func:`read_split` also keeps the surviving rows' numbers for later messages.
    """
    return read_split(path, bad_samples, encoding).table


def read_split(path: str | os.PathLike[str], bad_samples: BadSamples | None = None, encoding: str = "utf-8") -> Split:
    """:func:`read_table` as a :class:`Split` whose row numbers are those of the file, skipped rows left out.

    ``encoding`` is the CSV file's text encoding (e.g. ``latin-1``); text that does not decode is an
    error naming the row and column when the column is read.
    """
    import pyarrow.parquet as pq

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"Table file '{path}' does not exist.")
    if os.path.getsize(path) == 0:
        raise DataError(f"Table file '{path}' is empty (0 bytes): expected a header row and data rows.")
    name = path.lower().removesuffix(".gz")
    bad = bad_samples or BadSamples("raise", what="row")
    skipped: list[int] = []
    try:
        if name.endswith((".parquet", ".pq")):
            table = pq.read_table(path)
        elif name.endswith((".csv", ".tsv", ".txt")):
            table, skipped = _read_csv(path, "\t" if name.endswith(".tsv") else ",", bad, encoding)
        else:
            raise DataError(f"Table file '{path}': unknown format; use .csv, .tsv (optionally .gz) or .parquet.")
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"Cannot read table '{path}': {err}") from None
    if table.num_rows == 0:
        raise DataError(f"Table file '{path}' has a header but no data rows.")
    names = table.column_names
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"Table file '{path}' has duplicate column names {repeated}: give every column its own name.")
    rows = np.arange(1, table.num_rows + len(skipped) + 1, dtype=np.int64)
    if skipped:
        rows = np.setdiff1d(rows, np.asarray(skipped, dtype=np.int64))[: table.num_rows]
        bad.report(f"'{path}'")
    return Split(table, path, rows)


def table_columns(path: str | os.PathLike[str], encoding: str = "utf-8") -> list[str]:
    """A table file's column names, from its header (CSV/TSV, gzipped or not) or schema (Parquet),
    without reading its rows; errors name the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"Table file '{path}' does not exist.")
    name = path.lower().removesuffix(".gz")
    try:
        if name.endswith((".parquet", ".pq")):
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        import pyarrow.csv as pacsv

        check_encoding(encoding, path)
        delimiter = "\t" if name.endswith(".tsv") else ","
        options = pacsv.ReadOptions(encoding=encoding)
        reader = pacsv.open_csv(path, read_options=options, parse_options=pacsv.ParseOptions(delimiter=delimiter))
        return list(reader.schema.names)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"Cannot read the header of table '{path}': {err}") from None


def check_encoding(encoding: str, path: str | None = None) -> None:
    """Raise a :class:`ConfigError` naming ``encoding`` unless Python knows it; with ``path``, a
    :class:`DataError` when the file's first bytes say it is in a wider encoding than ``encoding``
    reads (UTF-16 or UTF-32, with or without a byte-order mark: read byte by byte, every other
    character would be a NUL and no row would have the header's fields)."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        reason = "is not a text encoding Python knows (e.g. utf-8, latin-1, cp1252)"
        raise ConfigError("encoding", encoding, reason) from None
    if path is None or name.startswith(("utf-16", "utf-32")):
        return
    wide = wide_encoding(path)
    if wide is not None:
        raise DataError(
            f"'{path}' looks like {wide} text, but it is read as {encoding!r} (data.encoding). "
            f"Set data.encoding={wide.lower()}, or save the file as UTF-8."
        )


def _read_csv(path: str, delimiter: str, bad: BadSamples, encoding: str = "utf-8") -> tuple[pa.Table, list[int]]:
    """The table, and the data-row numbers (1-based, header excluded) of rows skipped for a wrong field count.

    The first read uses pyarrow's threads, which cannot say where a bad row is; only a file that has
    one is read again on one thread to find its line numbers.
    """
    import pyarrow.csv as pacsv

    invalid: list[Any] = []

    def on_invalid(row: Any) -> str:
        invalid.append(row)
        return "skip" if bad.skipping else "error"

    check_encoding(encoding, path)
    block = _BLOCK

    def read(threads: bool) -> pa.Table:
        nonlocal block
        while True:
            try:
                return pacsv.read_csv(
                    path,
                    read_options=pacsv.ReadOptions(use_threads=threads, block_size=block, encoding=encoding),
                    parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid),
                    convert_options=pacsv.ConvertOptions(strings_can_be_null=True),  # "" is missing, not a category
                )
            except pa.ArrowInvalid as err:
                # A row longer than a read block (a field of megabytes): read again in larger blocks.
                if "straddl" not in str(err) or block >= os.path.getsize(path) + 1:
                    raise
                block = min(block * 8, os.path.getsize(path) + 1)

    try:
        table = read(threads=True)
    except pa.ArrowInvalid:
        if not invalid:
            raise
    if not invalid:
        return table, []
    invalid.clear()
    try:
        table = read(threads=False)
    except pa.ArrowInvalid:
        if not invalid:
            raise
        raise _row_error(path, invalid[0], hint=True) from None
    bad.seen(table.num_rows + len(invalid))
    for row in invalid:
        bad.skip(f"'{path}', line {row.number or '?'}", _row_error(path, row, hint=False))
    return table, [row.number - 1 for row in invalid if row.number is not None]


def _row_error(path: str, row: Any, hint: bool) -> DataError:
    line = f"line {row.number}" if row.number is not None else "a line"
    text = row.text if len(row.text) <= 80 else row.text[:77] + "..."
    counts = f"expected {row.expected_columns} fields (the header's), found {row.actual_columns}"
    message = f"'{path}', {line}: {counts}: {text!r}."
    if hint:
        message += " Fix the row (a stray delimiter or unquoted value?) or set data.on_error=skip to drop such rows."
    return DataError(message)


@dataclass
class Split:
    """The rows of one split: a table and each row's number in its source file (1-based, header excluded)."""

    table: pa.Table
    source: str
    rows: np.ndarray

    @classmethod
    def whole(cls, table: pa.Table, source: str) -> Split:
        return cls(table, source, np.arange(1, table.num_rows + 1, dtype=np.int64))

    def take(self, indices: np.ndarray) -> Split:
        return Split(self.table.take(pa.array(indices)), self.source, self.rows[indices])

    def where(self, position: int) -> str:
        """``'file', row R`` for error messages (CSV: line R + 1, after the header)."""
        return f"'{self.source}', row {int(self.rows[position])}"

    def column(self, name: str) -> pa.ChunkedArray:
        if self.table.schema.get_field_index(name) < 0:  # absent (repeated names are refused when read)
            names = self.table.column_names
            hint = "Fix the column names in the data config (numeric, categorical, target, weight)."
            other = [d for d in (";", "\t", "|") if len(names) == 1 and d in names[0]]
            if other and not self.source.lower().removesuffix(".gz").endswith(".parquet"):
                hint = (
                    f"The header is one column holding {other[0]!r}: the file seems to be separated by "
                    f"{other[0]!r}, and a .csv file is read as comma-separated (.tsv as tab-separated). "
                    "Save it comma-separated, or as .tsv if it uses tabs."
                )
            raise DataError(f"Column {name!r} is not in '{self.source}'. Columns there: {names}. {hint}")
        return self.table.column(name)

    def floats(self, name: str) -> np.ndarray:
        """Column ``name`` as float64 with NaN for missing values; non-numbers are an error naming the row."""
        column = self.column(name)
        if pa.types.is_boolean(column.type) or pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            # safe=False: an integer past 2**53 (a byte count, a big id) becomes the nearest float64, as
            # every feature becomes a float; Arrow's checked cast would refuse the whole column.
            return self._finite(name, column.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False))
        values = self._texts(name, column)
        out = np.empty(len(values), dtype=np.float64)
        for i, value in enumerate(values):
            if value is None or (isinstance(value, str) and not value.strip()):
                out[i] = np.nan
                continue
            try:
                out[i] = float(value)
            except (TypeError, ValueError):
                raise DataError(
                    f"Column {name!r} is numeric but holds {value!r} at {self.where(i)}. Fix the value, or list "
                    f"{name!r} under categorical if it is a category."
                ) from None
        return self._finite(name, out)

    def _finite(self, name: str, values: np.ndarray) -> np.ndarray:
        """``values``, unless one is infinite: standardizing would turn the whole column into nan/inf."""
        infinite = np.flatnonzero(np.isinf(values))
        if infinite.size:
            raise DataError(
                f"Column {name!r} holds {values[infinite[0]]} at {self.where(int(infinite[0]))} ({infinite.size} such "
                "rows): an infinite value makes the column's mean and std infinite. Replace it with a finite value, "
                "or leave the cell empty to treat it as missing (data.missing)."
            )
        return values

    def _texts(self, name: str, column: pa.ChunkedArray) -> list[Any]:
        """The column's values as Python objects; bytes that are not text in the file's encoding are an
        error naming the row (pyarrow keeps them as binary)."""
        values = column.to_pylist()
        if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
            for i, value in enumerate(values):
                if isinstance(value, bytes):
                    try:
                        values[i] = value.decode("utf-8")
                    except UnicodeDecodeError:
                        raise DataError(
                            f"Column {name!r} holds {value!r} at {self.where(i)}, which is not UTF-8 text. Set the "
                            "file's encoding, e.g. data.encoding=latin-1 (or cp1252), or save the file as UTF-8."
                        ) from None
        return values

    def strings(self, name: str) -> list[str | None]:
        column = self.column(name)
        if pa.types.is_floating(column.type):
            column = pc.if_else(pc.is_nan(column), pa.scalar(None, column.type), column)
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_boolean(column.type):
            return [None if v is None else _format_number(v) for v in column.to_pylist()]
        return [None if v is None else str(v) for v in self._texts(name, column)]


def _format_number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


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
            becomes its own category ``<missing>``.
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
        unknown = np.flatnonzero(codes < 0)
        if unknown.size and self.unknown_category == "raise":
            first = int(unknown[0])
            raise DataError(
                f"Column {name!r} has category {values[first]!r} at {split.where(first)} that the training split "
                f"does not have ({unknown.size} such rows; known: {vocab[:10]}). Set unknown_category='ignore' to "
                "encode unseen categories as all zeros."
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
            f"{list(classes)[:10]})."
        )
    return codes


def label_classes(split: Split, column: str) -> list[str]:
    """Sorted class names of ``column`` in ``split`` (numbers sort numerically)."""
    raw = split.column(column)
    values = [v for v in split.strings(column) if v is not None]
    if pa.types.is_integer(raw.type) or pa.types.is_floating(raw.type):
        return sorted(set(values), key=float)
    return sorted(set(values))


def encode_numbers(split: Split, column: str, what: str = "Target") -> np.ndarray:
    values = split.floats(column)
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
            targets[name] = encode_numbers(split, column)
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
