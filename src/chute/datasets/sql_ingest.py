"""Writing a table file (CSV or Parquet) into a SQL database: what the SQL examples, tests and
benchmarks read (:func:`load_table`, :func:`ingest`)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from chute.datasets.database import Database
from chute.datasets.sql_source import SqlSource, quote
from chute.errors import ConfigError, DataError


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
