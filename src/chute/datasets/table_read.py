"""Reading a table file (``.csv``/``.tsv``, optionally gzipped, or ``.parquet``) into a
:class:`Split`: typed columns, each row's number in its file, and errors that name the file, the
line, the column and the setting (``data.encoding``, the separator) that would fix them.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import logging
import os
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from chute.bad_samples import BadSamples
from chute.datasets.text_files import wide_encoding
from chute.errors import ConfigError, DataError

log = logging.getLogger(__name__)

_BLOCK = 1 << 20  # pyarrow's default CSV read block; grown for files with longer rows


def read_table(
    path: str | os.PathLike[str],
    bad_samples: BadSamples | None = None,
    encoding: str = "utf-8",
    text_columns: Sequence[str] = (),
) -> pa.Table:
    """Read a ``.csv``/``.tsv`` (optionally ``.gz``) or ``.parquet`` file; errors name the file.

    A CSV row with the wrong number of fields raises naming the file, the line and the field counts,
    or with ``bad_samples`` skipping (``on_error="skip"``) is dropped, counted and logged;
    :func:`read_split` also keeps the surviving rows' numbers for later messages.
    """
    return read_split(path, bad_samples, encoding, text_columns).table


def read_split(
    path: str | os.PathLike[str],
    bad_samples: BadSamples | None = None,
    encoding: str = "utf-8",
    text_columns: Sequence[str] = (),
    words_missing: Collection[str] | None = None,
) -> Split:
    """:func:`read_table` as a :class:`Split` whose row numbers are those of the file, skipped rows left out.

    ``encoding`` is the CSV file's text encoding (e.g. ``latin-1``); text that does not decode is an
    error naming the row and column when the column is read. ``text_columns`` (categories, class
    labels) are read from a CSV file as the text written there, whatever its cells look like: a
    column of codes such as ``007`` is then the same in every file, where type inference would make
    it the number 7 in a file whose codes are all digits and keep it text in another.

    ``words_missing``: the ``text_columns`` of a CSV file where the words for a missing value (``NA``,
    ``nan``, ...) are missing values, as the training file decided them (:attr:`Split.words_missing`);
    ``None`` decides from this file (see ``_as_text``).

    ``path`` may also be a folder of Parquet files (a partitioned dataset, as Spark, Dask or
    ``pyarrow.parquet.write_to_dataset`` write it), read as one table.
    """
    path = os.fspath(path)
    name = _check_exists(path)
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise DataError(f"Table file '{path}' is empty (0 bytes): expected a header row and data rows.")
    bad = bad_samples or BadSamples("raise", what="row")
    skipped: list[int] = []
    missing_here: frozenset[str] = frozenset(words_missing or ())
    try:
        if os.path.isdir(path) or name.endswith((".parquet", ".pq")):
            table = _plain_strings(_read_parquet(path))
        elif name.endswith((".csv", ".tsv", ".txt")):
            delimiter = "\t" if name.endswith(".tsv") else ","
            table, skipped, missing_here = _read_csv(path, delimiter, bad, encoding, text_columns, words_missing)
        else:
            raise DataError(f"Table file '{path}': unknown format; use .csv, .tsv (optionally .gz) or .parquet.")
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"Cannot read table '{path}': {err}") from None
    if table.num_rows == 0:
        raise DataError(f"Table file '{path}' has a header but no data rows.")
    names = _column_names(table.schema, path, encoding)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"Table file '{path}' has duplicate column names {repeated}: give every column its own name.")
    rows = np.arange(1, table.num_rows + len(skipped) + 1, dtype=np.int64)
    if skipped:
        rows = np.setdiff1d(rows, np.asarray(skipped, dtype=np.int64))[: table.num_rows]
        bad.report(f"'{path}'")
    return Split(table, path, rows, missing_here)


def table_columns(path: str | os.PathLike[str], encoding: str = "utf-8") -> list[str]:
    """A table file's column names, from its header (CSV/TSV, gzipped or not) or schema (Parquet, or
    a folder of Parquet files), without reading its rows; errors name the file."""
    path = os.fspath(path)
    name = _check_exists(path)
    try:
        if os.path.isdir(path) or name.endswith((".parquet", ".pq")):
            return _column_names(_parquet_schema(path), path, encoding)
        import pyarrow.csv as pacsv

        check_encoding(encoding, path)
        delimiter = "\t" if name.endswith(".tsv") else ","
        options = pacsv.ReadOptions(encoding=encoding)
        # Only the header is wanted: a bad row in the first block is reported when the rows are read
        # (where on_error applies), not here.
        parse = pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=lambda row: "skip")
        reader = pacsv.open_csv(path, read_options=options, parse_options=parse)
        return _column_names(reader.schema, path, encoding)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"Cannot read the header of table '{path}': {err}") from None


def _check_exists(path: str) -> str:
    """``path``'s lower-case name without ``.gz``; a missing file (or a folder that holds no Parquet
    files) is an error naming it."""
    if os.path.isdir(path):
        if not _parquet_parts(path):
            raise DataError(
                f"Table path '{path}' is a folder without .parquet files: give a .csv, .tsv or .parquet file, "
                "or a folder of Parquet files (a partitioned dataset)."
            )
    elif not os.path.isfile(path):
        raise DataError(f"Table file '{path}' does not exist.")
    return path.lower().removesuffix(".gz")


def _parquet_parts(folder: str) -> list[str]:
    """The Parquet files under ``folder`` (any depth: ``key=value`` partition folders), sorted."""
    return sorted(
        os.path.join(here, f)
        for here, dirs, files in os.walk(folder)
        for f in files
        if f.lower().endswith((".parquet", ".pq")) and not f.startswith((".", "_"))
    )


def _read_parquet(path: str) -> pa.Table:
    """A Parquet file, or a folder of them read as one dataset (with its ``key=value`` partition columns)."""
    import pyarrow.parquet as pq

    if os.path.isdir(path):
        return pq.ParquetDataset(path).read()
    return pq.read_table(path)


def _parquet_schema(path: str) -> pa.Schema:
    import pyarrow.parquet as pq

    if os.path.isdir(path):
        return pq.ParquetDataset(path).schema
    return pq.read_schema(path)


def _plain_strings(table: pa.Table) -> pa.Table:
    """``table`` with Arrow's view types (``string_view``, ``binary_view``: Polars writes them) and
    dictionary-encoded text (partition columns) as plain ``string``/``binary`` columns, which every
    compute function the table DataModules use takes."""
    fields = []
    for field in table.schema:
        kind = field.type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        if pa.types.is_string_view(kind):
            kind = pa.string()
        elif pa.types.is_binary_view(kind):
            kind = pa.binary()
        fields.append(field.with_type(kind))
    schema = pa.schema(fields)
    return table if schema.equals(table.schema) else table.cast(schema)


def _column_names(schema: pa.Schema, path: str, encoding: str) -> list[str]:
    """``schema``'s column names; a header that is not text in ``encoding`` is an error naming the file
    and the setting (pyarrow keeps an undecodable UTF-8 header as bytes, which Python cannot name)."""
    try:
        return list(schema.names)
    except UnicodeDecodeError as err:
        raw = err.object[max(0, err.start - 20) : err.end + 20] if isinstance(err.object, bytes) else b""
        raise DataError(
            f"The header of '{path}' is not {encoding} text (bytes {raw!r}). Set the file's encoding, e.g. "
            "data.encoding=latin-1 (or cp1252), or save the file as UTF-8."
        ) from None


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


def _read_csv(
    path: str,
    delimiter: str,
    bad: BadSamples,
    encoding: str = "utf-8",
    text_columns: Sequence[str] = (),
    words_missing: Collection[str] | None = None,
) -> tuple[pa.Table, list[int], frozenset[str]]:
    """The table, the data-row numbers (1-based, header excluded) of rows skipped for a wrong field
    count, and the text columns where the words for a missing value were read as missing.

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
                    convert_options=pacsv.ConvertOptions(
                        # Text stays as written: pyarrow's null words (NA, N/A, NULL, nan, ...) would make
                        # the category NA (Namibia) or the label "null" missing; only "" is (_as_text).
                        # In numeric columns those words are still missing values.
                        strings_can_be_null=False,
                        # as bytes: text that is not UTF-8 is named by its row when the column is read
                        column_types=dict.fromkeys(text_columns, pa.binary()),  # absent names are ignored
                    ),
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
        table, missing = _as_text(table, text_columns, words_missing)
        return table, [], missing
    invalid.clear()
    try:
        table = read(threads=False)
    except pa.ArrowInvalid:
        if not invalid:
            raise
        lines = _starting_lines(path, delimiter, encoding, invalid[:1])
        raise _row_error(path, invalid[0], lines, hint=True) from None
    bad.seen(table.num_rows + len(invalid))
    lines = _starting_lines(path, delimiter, encoding, invalid)
    bad.skip_all([(f"'{path}', {_line(row, lines)}", _row_error(path, row, lines, hint=False)) for row in invalid])
    table, missing = _as_text(table, text_columns, words_missing)
    return table, [row.number - 1 for row in invalid if row.number is not None], missing


def _as_text(
    table: pa.Table, names: Sequence[str], decided: Collection[str] | None = None
) -> tuple[pa.Table, frozenset[str]]:
    """``table`` with the columns ``names`` (read as bytes) as ``string`` where they are valid UTF-8;
    a column that is not stays bytes, and :meth:`Split.strings` names its first bad row.

    Missing cells of text (the CSV reader is told none, to decide here): an empty cell is missing in
    every column. The words for a missing value (``NA``, ``null``, ``nan``, ...) are missing too,
    except in the columns ``names`` (categories, labels) where the other cells are not all numbers:
    there ``NA`` is a category like ``US`` (Namibia), as written, and is logged. ``decided``: the
    ``names`` where they are missing, as the training file decided (the same in every file); also
    returned, for this file."""
    missing_in: set[str] = set()
    for index, type_ in enumerate(table.schema.types):
        if not (pa.types.is_string(type_) or pa.types.is_binary(type_)):
            continue
        field = table.schema.field(index)
        try:
            column, name = table.column(index), field.name
        except UnicodeDecodeError:  # a header that is not UTF-8: named by the header check
            continue
        empty = pc.equal(pc.binary_length(column), 0)
        words = pc.is_in(column, value_set=pa.array(_missing_words(), type=type_))
        if name not in names:
            words_missing = True  # not a category or label: as pyarrow reads it
        elif decided is not None:
            words_missing = name in decided
        else:
            words_missing = _numbers(pc.filter(column, pc.invert(pc.or_(empty, words))))
        missing = pc.or_(empty, words) if words_missing else empty
        if words_missing and name in names:
            missing_in.add(name)
        elif not words_missing and pc.any(words).as_py():
            found = sorted(set(pc.filter(column, words).to_pylist()))
            log.warning(
                "Column %r holds %s, read as %s (text, as written); leave such cells empty where they mean a "
                "missing value.", name, ", ".join(repr(_text(w)) for w in found[:4]),
                "categories" if len(found) > 1 else "a category",
            )  # fmt: skip
        table = table.set_column(index, field, pc.if_else(missing, pa.scalar(None, type_), column))
    for name in names:
        index = table.schema.get_field_index(name)
        if index < 0:
            continue
        with contextlib.suppress(pa.ArrowInvalid):  # not UTF-8: stays bytes
            table = table.set_column(index, name, table.column(index).cast(pa.string()))
    return table, frozenset(missing_in)


def _missing_words() -> list[str]:
    """pyarrow's CSV words for a missing value (``NA``, ``nan``, ...), without ``""`` (taken on its own)."""
    import pyarrow.csv as pacsv

    return [word for word in pacsv.ConvertOptions().null_values if word]


def _numbers(values: pa.ChunkedArray) -> bool:
    """Whether the values of a text column (bytes or string) are all numbers, and there are some: a
    column of class ids or numeric codes, where a word for a missing value means one."""
    if len(values) == 0:
        return False  # only such words: text
    try:
        pc.cast(pc.cast(values, pa.string()), pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def _text(value: Any) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def _starting_lines(path: str, delimiter: str, encoding: str, rows: Sequence[Any]) -> dict[int, int]:
    """The line of the file where each of ``rows`` (pyarrow's invalid rows) starts, by their number.

    pyarrow numbers rows, not lines: a quoted value holding line breaks (a review, an address) is
    one row over several lines, and every later row's number is then short of its line in an editor.
    Read again with Python's csv module, which counts lines, on this path only (rows to report).
    """
    wanted = {row.number for row in rows if row.number is not None}
    found: dict[int, int] = {}
    if not wanted:
        return found
    limit = csv.field_size_limit(sys.maxsize)  # pyarrow read the file's fields, however long
    try:
        with (
            contextlib.suppress(csv.Error, UnicodeError, LookupError, OSError, pa.ArrowException),
            pa.input_stream(path, compression="detect") as raw,  # a .csv.gz as pyarrow read it
            io.TextIOWrapper(raw, encoding=encoding, errors="replace", newline="") as f,
        ):
            reader = csv.reader(f, delimiter=delimiter)
            ended, number = 0, 0  # the line the previous row ended on; rows so far, as pyarrow counts them
            for record in reader:
                if not record:  # an empty line: pyarrow skips it uncounted
                    ended = reader.line_num
                    continue
                number += 1
                if number in wanted:
                    found[number] = ended + 1
                    if len(found) == len(wanted):
                        break
                ended = reader.line_num
    finally:
        csv.field_size_limit(limit)
    return found


def _line(row: Any, lines: dict[int, int]) -> str:
    """``line L`` where the row starts in the file; else ``row R`` (data rows, the header not counted)."""
    if row.number is None:
        return "a line"
    if row.number in lines:
        return f"line {lines[row.number]}"
    return f"row {row.number - 1}"


def _row_error(path: str, row: Any, lines: dict[int, int], hint: bool) -> DataError:
    text = row.text if len(row.text) <= 80 else row.text[:77] + "..."
    counts = f"expected {row.expected_columns} fields (the header's), found {row.actual_columns}"
    message = f"'{path}', {_line(row, lines)}: {counts}: {text!r}."
    if hint:
        message += " Fix the row (a stray delimiter or unquoted value?) or set data.on_error=skip to drop such rows."
    return DataError(message)


@dataclass
class Split:
    """The rows of one split: a table and each row's number in its source file (1-based, header excluded)."""

    table: pa.Table
    source: str
    rows: np.ndarray
    #: Text columns (categories, labels) of a CSV file where ``NA``, ``nan``, ... were read as missing
    #: values (:func:`read_split`); the other files of a table are read with the training file's.
    words_missing: frozenset[str] = frozenset()

    @classmethod
    def whole(cls, table: pa.Table, source: str) -> Split:
        return cls(table, source, np.arange(1, table.num_rows + 1, dtype=np.int64))

    def take(self, indices: np.ndarray) -> Split:
        return Split(self.table.take(pa.array(indices)), self.source, self.rows[indices], self.words_missing)

    def where(self, position: int) -> str:
        """``'file', row R`` for error messages (CSV: line R + 1, after the header)."""
        return f"'{self.source}', row {int(self.rows[position])}"

    def column(self, name: str) -> pa.ChunkedArray:
        if self.table.schema.get_field_index(name) < 0:  # absent (repeated names are refused when read)
            names = self.table.column_names
            hint = separator_hint(names, self.source) or (
                "Fix the column names in the data config (numeric, categorical, target, weight)."
            )
            raise DataError(f"Column {name!r} is not in '{self.source}'. Columns there: {names}. {hint}")
        return self.table.column(name)

    def floats(self, name: str, advice: str | None = None) -> np.ndarray:
        """Column ``name`` as float64 with NaN for missing values; non-numbers are an error naming the
        row and ending with ``advice`` (default: for a feature column, fix it or list it as categorical)."""
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
                advice = advice or f"Fix the value, or list {name!r} under categorical if it is a category."
                where = self.where(i)
                raise DataError(f"Column {name!r} is numeric but holds {value!r} at {where}. {advice}") from None
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
            return [None if v is None else format_number(v) for v in column.to_pylist()]
        return [None if v is None else str(v) for v in self._texts(name, column)]


def separator_hint(names: Sequence[str], source: str) -> str | None:
    """What to do when a CSV file's header read as one column holding another separator (``;``, tab,
    ``|``), or ``None``."""
    other = [d for d in (";", "\t", "|") if len(names) == 1 and d in names[0]]
    if not other or source.lower().removesuffix(".gz").endswith((".parquet", ".pq")):
        return None
    return (
        f"The header is one column holding {other[0]!r}: the file seems to be separated by {other[0]!r}, and a "
        ".csv file is read as comma-separated (.tsv as tab-separated). Save it comma-separated, or as .tsv if "
        "it uses tabs."
    )


def format_number(value: Any) -> str:
    """A number as category or class text: an integral float without its ``.0`` (``1.0`` is ``'1'``),
    anything else as Python writes it (exact: ``repr`` of a float round-trips)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def is_number(text: str) -> bool:
    """Whether ``text`` parses as a number (what :meth:`Split.floats` accepts in a text column)."""
    try:
        float(text)
    except ValueError:
        return False
    return True
