"""Rows of a SQL table or query, read a batch at a time by key: the data of :class:`~chute.datamodules.SqlDataModule`.

The source has a unique integer key column. What an epoch reads is decided by its *snapshot*:
the sorted keys of the rows committed when the epoch began (:meth:`SqlSource.keys`, 8 bytes a
row in memory, read on one rank and shared). The order (:class:`~chute.loader.key_orders.KeyOrder`) hands out batches of
those keys; a loader worker turns each batch into one query over key ranges
(:meth:`SqlSource.rows`), keeps exactly the keys asked for (a row inserted since, even inside a
range, waits for the next epoch) and encodes them with the table DataModules' own
:class:`~chute.datasets.tabular.TableEncoder`. Never a query per row.

Shuffling is by blocks of consecutive keys: the epoch's permutation moves whole blocks of
``block`` rows (a batch of 4,096 rows made of 64 blocks reads 64 key ranges, which a database
serves far faster than 4,096 scattered rows: 400k vs 126-163k rows/s measured here); ``block=1``
is a full shuffle of the key index.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Dataset

from chute.bad_samples import BadSamples
from chute.datasets.database import Database
from chute.datasets.table_read import Split
from chute.datasets.tabular import TableEncoder, encode_split
from chute.errors import ConfigError, DataError
from chute.loader.key_orders import KeyOrder, KeyRanges, KeyStream
from chute.loader.seeding import mix64

log = logging.getLogger(__name__)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")
_GAP = 8  # keys this close are read as one range (the rows between are read and dropped)
_MAX_RANGES = 256  # BETWEEN terms in one query: SQLite refuses expressions nested deeper than 1,000


def quote(name: str, key: str = "table") -> str:
    """``name`` (``table`` or ``schema.table``) as a quoted SQL identifier; anything else is refused."""
    if not _IDENTIFIER.match(name):
        raise ConfigError(key, name, "is not a plain table or column name (letters, digits, _ ; schema.table)")
    return ".".join(f'"{part}"' for part in name.split("."))


def quote_column(name: str) -> str:
    """``name`` as a quoted SQL column name, whatever its characters (``Body mass``, ``Label``): a ``"`` in
    it is doubled. The DataModule checks each name against the source's columns before any read."""
    return '"' + name.replace('"', '""') + '"'


_QUERY = re.compile(r"^\s*(select|with)\b", re.IGNORECASE)


def is_query(relation: str) -> bool:
    """Whether ``relation`` is a ``SELECT``/``WITH`` query rather than a table name (``withdrawals`` is a table)."""
    return bool(_QUERY.match(relation))


@dataclass
class SqlSource:
    """A table (or a ``SELECT``) of a :class:`Database` and its unique integer ``key`` column.

    Args:
        database: Where the rows are.
        relation: A table name (``readings``, ``lab.readings``) or a ``SELECT``/``WITH`` query.
        key: The unique, ordered integer key column.
    """

    database: Database
    relation: str
    key: str = "id"

    def __post_init__(self) -> None:
        self.relation = self.relation.strip().rstrip(";")
        if not is_query(self.relation):
            quote(self.relation)

    @property
    def name(self) -> str:
        """How messages name the source: the table's name, or ``query``."""
        return "query" if is_query(self.relation) else self.relation

    def _from(self) -> str:
        # The newline ends a trailing ``--`` comment of the query before the closing parenthesis.
        return f"({self.relation}\n) AS chute_rows" if is_query(self.relation) else quote(self.relation)

    def describe(self) -> str:
        return f"the {self.name if is_query(self.relation) else 'table ' + repr(self.name)} at {self.database.safe_url}"

    def columns(self) -> pa.Schema:
        """The source's columns (no rows read; SQLite gives no types without rows)."""
        return self.database.schema(f"SELECT * FROM {self._from()} WHERE 1 = 0", f"the columns of {self.name}")

    def keys(self, upto: int | None = None, since: int | None = None) -> np.ndarray:
        """The sorted keys of the rows committed now (with ``upto``: only keys ``<= upto``; with
        ``since``: only keys ``>= since``).

        Raises:
            ConfigError: the key column is missing or not integer.
            DataError: a key is NULL or repeated (the message names it).
        """
        table = self.database.arrow(self._key_query(upto, since), f"the keys of {self.name}")
        keys = self._key_array(table.column(0), table.num_rows)
        self._check_unique(keys)
        return keys

    def key_ranges(
        self, per_range: int, upto: int | None = None, keep: Callable[[np.ndarray], np.ndarray] | None = None,
        sample: int = 0, seed: int = 0,
    ) -> KeyRanges:  # fmt: skip
        """The snapshot of the rows committed now as :class:`KeyRanges` of ``per_range`` rows, read in
        one streamed scan of the key column: memory holds the ranges (and ``sample`` keys), never the
        key index. ``keep(keys)``: which keys count (a split's share); ``sample``: also draw that many
        of the kept keys, the same ones whatever the scan's chunks (lowest seeded hash)."""
        scan = _RangeScan(self, per_range, keep, sample, seed)
        return self.database.scan(self._key_query(upto, None), f"the keys of {self.name}", scan.restart).result()

    def _key_query(self, upto: int | None, since: int | None) -> str:
        """The sorted keys, only those ``<= upto`` / ``>= since`` when given."""
        key = quote_column(self.key)
        terms = [f"{key} <= {int(upto)}"] if upto is not None else []
        terms += [f"{key} >= {int(since)}"] if since is not None else []
        where = " WHERE " + " AND ".join(terms) if terms else ""
        return f"SELECT {key} FROM {self._from()}{where} ORDER BY 1"

    def _key_array(self, column: pa.ChunkedArray | pa.Array, rows: int) -> np.ndarray:
        """The key column read as ``int64`` (refused if it is not an integer column or holds a NULL)."""
        if not (pa.types.is_integer(column.type) or (pa.types.is_null(column.type) and rows == 0)):
            reason = f"must be an integer column of {self.describe()}, and it holds {column.type}"
            raise ConfigError("key", self.key, reason)
        if column.null_count:
            raise DataError(f"Key column {self.key!r} of {self.describe()} has {column.null_count} NULL keys.")
        if not len(column):
            return np.empty(0, np.int64)
        return column.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)

    def _check_unique(self, keys: np.ndarray) -> None:
        """Sorted ``keys`` must not repeat."""
        repeated = np.flatnonzero(keys[1:] == keys[:-1])
        if repeated.size:
            raise DataError(
                f"Key column {self.key!r} of {self.describe()} is not unique: key {int(keys[repeated[0]])} appears "
                f"more than once ({repeated.size} repeats). Name a unique column as data.key."
            )

    def rows(self, keys: np.ndarray, columns: Sequence[str]) -> tuple[pa.Table, np.ndarray]:
        """The rows of ``keys`` (in that order) with ``columns``, read in one query over key ranges,
        and the positions in ``keys`` of the keys found (a row deleted since its key was read is missing).
        Values arrive as stored, every digit (:meth:`Database.arrow`).
        """
        key = quote_column(self.key)
        wanted = np.asarray(keys, dtype=np.int64)
        if wanted.size == 0:
            return pa.table({c: pa.array([], pa.null()) for c in columns}), np.empty(0, np.int64)
        selected = ", ".join([f"{key} AS chute_key", *(quote_column(c) for c in columns)])  # a key may be a feature too
        what = f"a batch of {len(wanted)} rows of {self.name}"
        tables = [self.database.arrow(f"SELECT {selected} FROM {self._from()} WHERE {where}", what)
                  for where in _where_clauses(key, np.unique(wanted))]  # fmt: skip
        table = tables[0] if len(tables) == 1 else _concat(tables)
        found = table.column(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        order = np.argsort(found, kind="stable")
        slot = np.searchsorted(found[order], wanted).clip(0, max(len(found) - 1, 0))
        present = np.flatnonzero(found[order][slot] == wanted) if len(found) else np.empty(0, np.int64)
        table = table.take(pa.array(order[slot[present]])).drop_columns(["chute_key"])
        return _plain_types(table), present


class _RangeScan:
    """Folds a streamed scan of sorted keys into :class:`KeyRanges` (see :meth:`SqlSource.key_ranges`)."""

    def __init__(
        self, source: SqlSource, per_range: int, keep: Callable[[np.ndarray], np.ndarray] | None, sample: int,
        seed: int,
    ) -> None:  # fmt: skip
        self.source, self.per_range, self.keep = source, max(int(per_range), 1), keep
        self.sample_size, self.seed = int(sample), seed
        self.restart()

    def restart(self) -> _RangeScan:
        """Empty the fold (a scan started again after a lost connection); returns it."""
        self.starts: list[np.ndarray] = []
        self.ends: list[np.ndarray] = []
        self.pending = np.empty(0, np.int64)  # kept keys not yet in a range
        self.last: int | None = None
        self.sample = np.empty(0, np.int64)
        self.priority = np.empty(0, np.uint64)
        return self

    def add(self, batch: pa.RecordBatch) -> None:
        keys = self.source._key_array(batch.column(0), batch.num_rows)
        if not len(keys):
            return
        self.source._check_unique(keys if self.last is None else np.concatenate([[self.last], keys]))
        self.last = int(keys[-1])
        kept = keys[self.keep(keys)] if self.keep is not None else keys
        held = np.concatenate([self.pending, kept])
        full = len(held) // self.per_range * self.per_range
        if full:
            runs = held[:full].reshape(-1, self.per_range)
            self.starts.append(runs[:, 0].copy())
            self.ends.append(runs[:, -1].copy())
        self.pending = held[full:]
        if self.sample_size and len(kept):  # the lowest hashes so far: the same sample for any chunking
            keys_ = np.concatenate([self.sample, kept])
            priority = np.concatenate([self.priority, mix64(kept, self.seed)])
            if len(keys_) > self.sample_size:
                lowest = np.argpartition(priority, self.sample_size - 1)[: self.sample_size]
                keys_, priority = keys_[lowest], priority[lowest]
            self.sample, self.priority = keys_, priority

    def result(self) -> KeyRanges:
        starts, ends = list(self.starts), list(self.ends)
        counts = [np.full(len(s), self.per_range, np.int64) for s in starts]
        if len(self.pending):
            starts.append(self.pending[:1])
            ends.append(self.pending[-1:])
            counts.append(np.array([len(self.pending)], np.int64))
        cat = lambda parts: np.concatenate(parts) if parts else np.empty(0, np.int64)  # noqa: E731
        return KeyRanges(cat(starts), cat(ends), cat(counts), self.last, np.sort(self.sample))


def _where_clauses(key: str, keys: np.ndarray) -> list[str]:
    """WHERE clauses for the sorted unique ``keys``: ``BETWEEN`` for runs of near keys, ``IN`` for the
    rest; a clause has at most ``_MAX_RANGES`` runs (a sparse sample has thousands), so reading
    ``keys`` may take more than one query.

    >>> _where_clauses('"id"', np.array([1, 2, 3, 4, 50, 90]))
    ['"id" BETWEEN 1 AND 4 OR "id" IN (50, 90)']
    """
    gaps = np.diff(keys).view(np.uint64)  # exact even where the difference passes int64 (keys -5e18 and 5e18)
    breaks = np.flatnonzero(gaps > _GAP) + 1
    starts, ends = np.concatenate([[0], breaks]), np.concatenate([breaks, [len(keys)]])
    runs = list(zip(starts.tolist(), ends.tolist(), strict=True))
    singles = [int(keys[s]) for s, e in runs if e - s == 1]
    spans = [f"{key} BETWEEN {int(keys[s])} AND {int(keys[e - 1])}" for s, e in runs if e - s > 1]
    clauses = [spans[i : i + _MAX_RANGES] for i in range(0, len(spans), _MAX_RANGES)] or [[]]
    if singles:  # one IN list is one node of the expression, however long
        clauses[0].append(f"{key} IN ({', '.join(map(str, singles))})")
    return [" OR ".join(clause) for clause in clauses]


def _plain_types(table: pa.Table) -> pa.Table:
    """Extension columns (PostgreSQL's ``numeric`` arrives as an opaque string type) as their storage."""
    columns = []
    for column in table.columns:
        if isinstance(column.type, pa.ExtensionType):
            column = pa.chunked_array([chunk.storage for chunk in column.chunks], column.type.storage_type)
        columns.append(column)
    return pa.table(columns, names=table.column_names)


class KeyedSplit(Split):
    """A :class:`Split` whose rows are named by key (``'readings', key 17``) instead of file row."""

    def where(self, position: int) -> str:
        return f"'{self.source}', key {int(self.rows[position])}"

    def take(self, indices: np.ndarray) -> KeyedSplit:
        return KeyedSplit(self.table.take(pa.array(indices)), self.source, self.rows[indices])


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


def key_split(keys: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Whether each key belongs to the held-out share: a seeded hash of the key alone, so a row's split
    never changes and rows that arrive later split in the same proportion.

    >>> key_split(np.arange(10_000), 0.2, seed=0).mean().round(2)
    np.float64(0.2)
    """
    held = np.empty(len(keys), dtype=bool)
    for start in range(0, len(keys), 1 << 20):  # in chunks: the hash's temporaries stay small
        part = mix64(keys[start : start + (1 << 20)], seed)
        held[start : start + len(part)] = (part >> np.uint64(11)).astype(np.float64) / float(1 << 53) < fraction
    return held


def load_table(
    path: str, url: str, table: str, *, key: str = "id", if_exists: str = "fail", encoding: str = "utf-8"
) -> int:
    """Load a CSV/TSV/Parquet file into table ``table`` of the database at ``url``; returns the rows written.

    The file is read as :class:`~chute.datamodules.TabularDataModule` reads it (typed columns, empty
    cells as NULL), then written by :func:`ingest`.
    """
    from chute.datasets.table_read import read_table

    return ingest(read_table(path, encoding=encoding), url, table, key=key, if_exists=if_exists, what=f"'{path}'")


def ingest(
    data: pa.Table, url: str, table: str, *, key: str = "id", if_exists: str = "fail", what: str = "rows"
) -> int:
    """Write ``data`` into table ``table`` at ``url`` in one bulk load (PostgreSQL's ``COPY``), with a
    unique index on ``key``; returns the rows written.

    Without a ``key`` column in ``data``, one is added: ``1..n`` in row order (appending continues
    after the table's largest key). ``if_exists``: ``fail``, ``replace`` or ``append``.
    """
    import adbc_driver_manager as adbc

    if if_exists not in ("fail", "replace", "append"):
        raise ConfigError("if_exists", if_exists, "must be 'fail', 'replace' or 'append'")
    quoted, quoted_key = quote(table), quote(key, "key")
    database = Database(url)
    if key not in data.column_names:
        start = 1
        if if_exists == "append":
            existing = SqlSource(database, table, key).keys()
            start = int(existing[-1]) + 1 if len(existing) else 1
        data = data.add_column(0, key, pa.array(np.arange(start, start + data.num_rows, dtype=np.int64)))
    mode = {"fail": "create", "replace": "replace", "append": "append"}[if_exists]
    index = quote(f"{table.split('.')[-1]}_{key}_key")
    schema, _, name = table.rpartition(".")
    if database.kind == "sqlite":  # one file, one schema: "main.readings" is "readings"
        if schema not in ("", "main"):
            raise ConfigError("table", table, "names a schema; a SQLite file has one (main)")
        schema, quoted = "", quote(name)
    try:
        with database.connect(create=True) as connection, connection.cursor() as cursor:
            written = cursor.adbc_ingest(name, data, mode=mode, db_schema_name=schema or None)
            if mode != "append":
                cursor.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {quoted} ({quoted_key})")
            # Statistics now: without them PostgreSQL planned the key-range reads of a freshly loaded
            # 200k-row table badly (73k rows/s read, 118k once analyzed); autovacuum would be later.
            cursor.execute(f"ANALYZE {quoted}")
    except adbc.Error as err:
        message = database.scrub(str(err).strip().splitlines()[0])
        raise DataError(f"Loading {what} into table '{table}' of {database.safe_url} failed: {message}") from None
    return int(written if written is not None and written >= 0 else data.num_rows)


def fetch_split(source: SqlSource, keys: np.ndarray, columns: Sequence[str], chunk: int = 65536) -> KeyedSplit:
    """The rows of ``keys`` as one :class:`KeyedSplit` (read ``chunk`` keys a query): what fitting reads."""
    tables, found = [], []
    for start in range(0, len(keys), chunk):
        part = keys[start : start + chunk]
        table, present = source.rows(part, columns)
        tables.append(table)
        found.append(part[present])
    table = _concat(tables) if tables else pa.table({})
    return KeyedSplit(table, source.name, np.concatenate(found) if found else np.empty(0, np.int64))


def _concat(tables: list[pa.Table]) -> pa.Table:
    """One table from reads whose column types may differ (SQLite: a chunk with a text cell in a number
    column reads as text): such columns become text, numbers written exactly, for encoding to name the cell."""
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        names = tables[0].column_names
        mixed = {n for n in names if len({str(t.schema.field(n).type) for t in tables} - {"null"}) > 1}
        cast = [
            pa.table([t.column(n).cast(pa.large_string()) if n in mixed else t.column(n) for n in names], names=names)
            for t in tables
        ]
        return pa.concat_tables(cast, promote_options="permissive")
