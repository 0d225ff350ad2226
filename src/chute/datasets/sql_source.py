"""A SQL table or query as a source of rows by key: names quoted and checked, the snapshot's keys
(sorted, or as key ranges), rows read by key ranges in as few queries as the database allows, and
the seeded hold-out by key."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from chute.datasets.database import Database
from chute.datasets.table_read import Split
from chute.errors import ConfigError, DataError
from chute.loader.key_orders import KeyRanges
from chute.loader.seeding import mix64

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


def check_names(source: SqlSource, names: Sequence[str], named: Mapping[str, Sequence[str]]) -> None:
    """Each column in ``named`` (setting -> columns) must be one of ``names`` exactly, case included (a
    quoted name keeps its case on PostgreSQL, and rows are read back by name)."""
    present = set(names)
    for setting, columns in named.items():
        for name in (n for n in columns if n not in present):
            same = [n for n in names if n.lower() == name.lower()]
            close = (same + [n for n in difflib.get_close_matches(name, names, n=3) if n not in same])[:3]
            if close:
                hint = f"the closest: {', '.join(map(repr, close))}"
            else:
                hint = f"its columns: {list(names[:20])}{' ...' if len(names) > 20 else ''}"
            raise ConfigError(setting, name, f"is not a column of {source.describe()}; {hint}.")
