"""Rows of a SQL table or query, read a batch at a time by key: the data of :class:`~chute.datamodules.SqlDataModule`.

The source has a unique integer key column (:class:`~chute.datasets.sql_source.SqlSource`). What
an epoch reads is decided by its *snapshot*: the sorted keys of the rows committed when the epoch
began (``SqlSource.keys``, 8 bytes a row in memory, read on one rank and shared). The order
(:class:`~chute.loader.key_orders.KeyOrder`) hands out batches of those keys; a loader worker turns
each batch into one query over key ranges (``SqlSource.rows``), keeps exactly the keys asked for (a
row inserted since, even inside a range, waits for the next epoch) and encodes them with the table
DataModules' own :class:`~chute.datasets.tabular.TableEncoder` (:class:`SqlRows`). Never a query
per row. Writing a table file into a database is :mod:`chute.datasets.sql_ingest`.

Shuffling is by blocks of consecutive keys: the epoch's permutation moves whole blocks of
``block`` rows (a batch of 4,096 rows made of 64 blocks reads 64 key ranges, which a database
serves far faster than 4,096 scattered rows: 400k vs 126-163k rows/s measured here); ``block=1``
is a full shuffle of the key index.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset

from chute.bad_samples import BadSamples
from chute.datasets.sql_source import KeyedSplit, SqlSource
from chute.datasets.table_read import Split, is_number
from chute.datasets.tabular import TableEncoder, encode_split
from chute.errors import DataError
from chute.loader.key_orders import KeyOrder, KeyStream

log = logging.getLogger(__name__)


def binary_columns(table: pa.Table, names: Sequence[str]) -> list[str]:
    """Which of ``names`` are binary columns of ``table`` (SQLite BLOB, PostgreSQL bytea)."""
    kinds, wanted = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_fixed_size_binary), set(names)
    return [f.name for f in table.schema if f.name in wanted and any(kind(f.type) for kind in kinds)]


def blob_error(names: Sequence[str], where: str) -> DataError:
    """The one rule for binary columns: they are not features or targets, whether their bytes happen to be
    UTF-8 text or not (a file's bytes are decoded by its encoding; a BLOB has none to name)."""
    return DataError(
        f"Column(s) {list(names)} of {where} hold binary values (SQLite BLOB, PostgreSQL bytea), which are not "
        "features or targets. Leave them out of data.numeric, data.categorical and data.target, or cast them in a "
        'query (data.table="SELECT id, CAST(col AS TEXT) AS col, ... FROM readings").'
    )


@dataclass
class Encoding:
    """What turns fetched rows into tensors: the fitted encoder, the task and its classes."""

    encoder: TableEncoder
    target: str
    task: str
    classes: Sequence[str]
    weight: str | None = None

    @property
    def columns(self) -> list[str]:
        names = [*self.encoder.numeric, *self.encoder.categorical, self.target]
        return names + ([self.weight] if self.weight is not None else [])

    def __call__(self, split: Split) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        blobs = binary_columns(split.table, self.columns)
        if blobs:  # e.g. a val_table whose column holds BLOBs where the training table's held numbers
            raise blob_error(blobs, f"'{split.source}'")
        tasks = {"target": (self.target, self.task)}
        features, targets, weights = encode_split(split, self.encoder, tasks, {"target": self.classes}, self.weight)
        return features, targets["target"], weights


class SqlRows(Dataset[tuple[torch.Tensor, ...]]):
    """Encoded rows of a :class:`SqlSource`, fetched by key: ``rows.__getitems__(keys)`` is one query.

    The DataLoader's sampler hands out keys (a :class:`KeyOrder`), so this object holds no key
    index and each worker only opens its own connection. Batches are ``(features, targets)`` (and
    ``weights`` with a weight column), as :class:`~chute.datasets.TabularDataset` gives them.

    Args:
        source: The table or query.
        encoding: The fitted encoding.
        bad: The ``on_error`` policy: a row with a bad value (NULL, text in a number column, an
            unknown class) or deleted since the epoch's snapshot raises naming the source, key and
            column, or is left out and counted.
    """

    def __init__(self, source: SqlSource, encoding: Encoding, bad: BadSamples) -> None:
        self.source = source
        self.encoding = encoding
        self.bad = bad
        self.order: KeyOrder | KeyStream | None = None  # the main process's order: len() is its snapshot's

    def __len__(self) -> int:
        return self.order.rows if self.order is not None else 0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["order"] = None  # workers get keys from the sampler; they need no key index
        return state

    def __getitem__(self, key: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[0] for t in self.__getitems__([key]))

    def __getitems__(self, keys: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, ...]:
        wanted = np.asarray(keys, dtype=np.int64)
        table, present = self.source.rows(wanted, self.encoding.columns)
        self.bad.seen(len(wanted))
        if len(present) < len(wanted):
            for key in np.delete(wanted, present):
                error = DataError(
                    f"Row {int(key)} of {self.source.describe()} was in this epoch's snapshot and is gone "
                    "(deleted while the epoch ran)."
                )
                self.bad.skip(f"'{self.source.name}', key {int(key)}", error)
        split = KeyedSplit(table, self.source.name, wanted[present])
        try:
            encoded = self.encoding(split)
        except DataError:
            if not self.bad.skipping:
                raise
            encoded = self.encoding(split.take(self._good_rows(split)))
        return _tensors(*encoded)

    def _good_rows(self, split: KeyedSplit) -> np.ndarray:
        """Positions of the rows that encode on their own; the others are skipped and counted."""
        good = []
        for i in range(split.table.num_rows):
            try:
                self.encoding(split.take(np.array([i])))
            except DataError as err:
                self.bad.skip(f"'{split.source}', key {int(split.rows[i])}", err)
                continue
            good.append(i)
        return np.asarray(good, dtype=np.int64)


def _tensors(features: np.ndarray, targets: np.ndarray, weights: np.ndarray | None) -> tuple[torch.Tensor, ...]:
    out = (torch.from_numpy(features), torch.from_numpy(np.ascontiguousarray(targets)))
    return out if weights is None else (*out, torch.from_numpy(weights))


def without_blobs(split: KeyedSplit, named: Sequence[str], where: str, owner: str) -> KeyedSplit:
    """``split`` without its binary (BLOB) columns, which are not features: one of ``named`` (the columns
    the settings name) is an error, the others (met while inferring the numeric columns) are left out
    and said so once."""
    blobs = binary_columns(split.table, split.table.column_names)
    if wanted := [c for c in blobs if c in named]:
        raise blob_error(wanted, where)
    if not blobs:
        return split
    rank_zero_info(
        f"{owner}: leaving out binary (BLOB) columns {blobs} of {where}: they are not features (cast one in "
        'a query, data.table="SELECT ..., CAST(col AS TEXT) AS col ...").'
    )
    return KeyedSplit(split.table.drop_columns(blobs), split.source, split.rows)


def readable_rows(split: KeyedSplit, numeric: Sequence[str], target: str, allow_missing: bool) -> KeyedSplit:
    """The rows of ``split`` whose numeric features and target can be read (``on_error=skip``); a blank
    numeric cell is missing (as ``Split.floats`` reads it), readable when ``allow_missing``."""
    good = np.ones(split.table.num_rows, dtype=bool)
    for name in numeric:
        good &= [is_number(v) if v is not None and v.strip() else allow_missing for v in split.strings(name)]
    good &= [v is not None for v in split.strings(target)]
    return split.take(np.flatnonzero(good))
