"""Database connections for the SQL sources: URLs, one connection per process and thread, retries.

Both databases are read through ADBC (Arrow Database Connectivity): a query's result arrives as
an Arrow table built in C, with no Python object per value, and the same code serves SQLite (the
embedded default: nothing to start) and PostgreSQL (through libpq). Measured on the 2-core machine
(12 columns, ranges of 4,096 rows): ADBC read 403-422k rows/s from either, Python's ``sqlite3``
156k and psycopg 207k (the rows then still had to become columns).

Credentials are kept out of messages: errors, log lines and ``repr`` show the URL with its
passwords replaced by ``***`` (:func:`redact`), and driver messages are scrubbed of them
(:meth:`Database.scrub`).
Prefer a password in ``PGPASSWORD`` or ``~/.pgpass`` (libpq reads both) to one in the URL, which
Hydra records in the run's ``.hydra/config.yaml``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.compute as pc

from chute.datasets.table_read import format_number
from chute.errors import ConfigError, DataError

log = logging.getLogger(__name__)
F = TypeVar("F")

# Connections by (pid, thread, url). A forked DataLoader worker inherits its parent's; closing one
# there would end the parent's session too (libpq says goodbye on the shared socket), so a child
# keeps inherited connections referenced and unused, and opens its own.
_CONNECTIONS: dict[tuple[int, int, str], Any] = {}
_INHERITED: list[Any] = []
_LOCK = threading.Lock()


def _forget_inherited() -> None:
    _INHERITED.extend(_CONNECTIONS.values())
    _CONNECTIONS.clear()


def _close_at_exit() -> None:
    """Close this process's connections while the driver is still loaded (at interpreter shutdown their
    finalizers would run after it is torn down, and print errors)."""
    threaded = sys.modules.get("chute.loader.threaded")
    if threaded is not None:  # loader threads may be reading through these connections: stop them first
        threaded.stop_running()
    pid = os.getpid()
    for key in [k for k in _CONNECTIONS if k[0] == pid]:
        with contextlib.suppress(Exception):
            _CONNECTIONS.pop(key).close()


os.register_at_fork(after_in_child=_forget_inherited)
atexit.register(_close_at_exit)

# SQLite's driver reserves room for a whole batch of every column before it reads a row: batches of
# 1,000,000 rows of 2,000 columns reserved 12-20 GB of address space, and a process under a memory
# limit (ulimit -v, a container) crashed on a 20-row table (issue 26). So batches are sized in bytes.
_BATCH_BYTES = 64 << 20
_MAX_BATCH_ROWS = 1_000_000


def batch_rows(columns: int, at_least: int = 1) -> int:
    """Rows per SQLite driver batch for results of ``columns`` columns: about 64 MB of 8-byte cells,
    at least ``at_least`` (a loader batch, read in one piece), at most 1,000,000.

    Example:
        >>> batch_rows(2_000), batch_rows(2_000, at_least=8_192), batch_rows(12)
        (4194, 8192, 699050)
    """
    return min(max(_BATCH_BYTES // (8 * max(columns, 1)), at_least, 1), _MAX_BATCH_ROWS)


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (in the authority and in ``password=`` query items).

    Example:
        >>> redact("postgresql://ana:s3cret@db.example:5432/lab?sslmode=require&password=x")
        'postgresql://ana:***@db.example:5432/lab?sslmode=require&password=%2A%2A%2A'
    """
    if "://" not in url:  # not a URL (e.g. a libpq "host=... password=..." string): hide every password
        return _SECRET.sub(r"\1***", url)
    parts = urlsplit(url)
    if parts.password is None and "password" not in parts.query.lower():
        return url
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{host}"
    query = parts.query
    if "password" in query.lower():  # password=, sslpassword=
        items = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower().endswith("password") else v) for k, v in items])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_SECRET = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def sqlite_file(url: str) -> str:
    """The file a ``sqlite:///`` URL names (``""`` for any other URL)."""
    return unquote(url.split("://", 1)[1][1:]) if url.lower().startswith("sqlite:///") else ""


@dataclass
class Database:
    """A database named by URL: ``sqlite:///relative.db``, ``sqlite:////absolute/path.db``, or
    ``postgresql://user@host:port/dbname`` (libpq's URI form, e.g. ``?host=/run/postgresql`` for a
    Unix socket).

    Args:
        url: The database URL.
        retries: A lost connection (server restarted, network cut, ``database is locked``) is
            retried this many times, waiting ``retry_wait`` seconds and doubling each time; then
            :class:`~chute.errors.DataError`.
        retry_wait: The first wait, in seconds.
        batch_rows: Rows per SQLite driver batch (:func:`batch_rows`); :class:`~chute.datamodules.SqlDataModule`
            sizes it at ``setup`` from its widest source and its batch size.
    """

    url: str = field(repr=False)
    retries: int = 3
    retry_wait: float = 0.5
    batch_rows: int = _MAX_BATCH_ROWS
    kind: str = field(init=False)

    def __repr__(self) -> str:
        return f"Database({self.safe_url!r}, retries={self.retries}, retry_wait={self.retry_wait})"

    def __post_init__(self) -> None:
        scheme = urlsplit(self.url).scheme.lower() if "://" in self.url else ""
        if scheme == "sqlite":
            self.kind = "sqlite"
            if not self.path or self.path == ":memory:":
                raise ConfigError(
                    "url",
                    self.safe_url,
                    "names no SQLite file: use sqlite:///relative/path.db or sqlite:////abs/path.db",
                )
        elif scheme in ("postgresql", "postgres"):
            self.kind = "postgresql"
        else:
            reason = "must start with sqlite:/// (a file) or postgresql:// (a server)"
            raise ConfigError("url", self.safe_url, reason)
        if self.retries < 0:
            raise ConfigError("retries", self.retries, "must be >= 0")
        if self.retry_wait < 0:
            raise ConfigError("retry_wait", self.retry_wait, "must be >= 0 seconds")

    @property
    def path(self) -> str:
        """The SQLite file (``sqlite:///`` URLs)."""
        return sqlite_file(self.url)

    @property
    def safe_url(self) -> str:
        """The URL as messages show it (no password)."""
        return redact(self.url)

    def scrub(self, text: str) -> str:
        """``text`` without the URL's password (driver messages may quote the connection string)."""
        password = urlsplit(self.url).password
        secrets = [password, unquote(password)] if password else []
        secrets += [v for k, v in parse_qsl(urlsplit(self.url).query) if k.lower().endswith("password") and v]
        for secret in secrets:
            text = text.replace(secret, "***")
        return text.replace(self.url, self.safe_url)

    # -- Connections --------------------------------------------------------------------------------

    def connect(self, create: bool = False) -> Any:
        """A new ADBC connection in autocommit mode (each read sees what was committed when it ran);
        ``create``: a SQLite file that does not exist yet is made."""
        if self.kind == "sqlite":
            import adbc_driver_sqlite.dbapi as sqlite

            if not create and not os.path.isfile(self.path):
                raise DataError(f"SQLite file '{self.path}' (from url={self.safe_url!r}) does not exist.")
            connection = sqlite.connect(self.path, autocommit=True)
            with connection.cursor() as cursor:  # wait for a writer's commit instead of failing at once
                cursor.execute("PRAGMA busy_timeout = 10000")
            return connection
        import adbc_driver_postgresql.dbapi as postgresql

        return postgresql.connect(self.url.replace("postgres://", "postgresql://", 1), autocommit=True)

    def _connection(self) -> Any:
        key = (os.getpid(), threading.get_ident(), self.url)
        with _LOCK:
            connection = _CONNECTIONS.get(key)
        if connection is None:
            connection = self.connect()
            with _LOCK:
                _close_dead_threads()
                _CONNECTIONS[key] = connection
        return connection

    def _drop_connection(self) -> None:
        with _LOCK:
            connection = _CONNECTIONS.pop((os.getpid(), threading.get_ident(), self.url), None)
        if connection is not None:
            with contextlib.suppress(Exception):  # a dead connection may fail to close; it is gone either way
                connection.close()

    def arrow(self, sql: str, what: str) -> pa.Table:
        """Run ``sql`` and return its result as an Arrow table; ``what`` names the read in errors.

        A lost connection (or a busy SQLite file) is reopened and the read retried (see ``retries``);
        any other error (unknown table or column, syntax, a value the driver cannot read) raises at
        once as a :class:`~chute.errors.DataError`.
        """
        if self.kind != "sqlite":
            return self._retrying(sql, what, lambda cursor: cursor.fetch_arrow_table(), self.batch_rows)
        # SQLite keeps each value's own type and the driver gives a column one: a column mixing REAL
        # and text arrives as text with every REAL written to 7 digits (1.0000001 as 1.000000e+00), and
        # a type that changes after the first batch is an error. Both are read again value by value.
        table = self._retrying(sql, what, _fetch_typed, self.batch_rows)
        return self.exact(sql, what) if table is None or _rounded(table) else table

    def schema(self, sql: str, what: str) -> pa.Schema:
        """The columns of ``sql``'s result, read in one-row batches (the driver reserves a batch's room
        even for a result of no rows, and the width is not known yet)."""
        schema: pa.Schema = self._retrying(sql, what, lambda cursor: cursor.fetch_arrow_table().schema, batch_rows=1)
        return schema

    def scan(self, sql: str, what: str, fold: Callable[[], F]) -> F:
        """Run ``sql`` and hand its result to ``fold()``'s ``add(batch)``, one Arrow record batch at a
        time, so a result larger than memory can be summarised; returns the fold. A lost connection
        starts the scan again with a fresh ``fold()``."""

        def run(cursor: Any) -> F:
            folded = fold()
            for batch in cursor.fetch_record_batch():
                folded.add(batch)  # type: ignore[attr-defined]
            return folded

        return self._retrying(sql, what, run, batch_rows=min(65_536, self.batch_rows))

    def _retrying(self, sql: str, what: str, fetch: Callable[[Any], F], batch_rows: int) -> F:
        import adbc_driver_manager as adbc

        wait = self.retry_wait
        for attempt in range(self.retries + 1):
            try:
                with self._connection().cursor() as cursor:
                    if self.kind == "sqlite":
                        cursor.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(batch_rows)})
                    cursor.execute(sql)
                    return fetch(cursor)
            # The driver's errors, and those of a result read as a stream (OSError, ArrowException).
            except (adbc.Error, OSError, pa.ArrowException) as err:
                if not _lost(err):  # the query or the data: trying again would fail again
                    raise DataError(
                        f"Reading {what} from {self.safe_url} failed: {self.scrub(_message(err))}"
                    ) from None
                self._drop_connection()
                if attempt == self.retries:
                    raise DataError(
                        f"Lost the connection to {self.safe_url} while reading {what}, and {self.retries} retries "
                        f"over {self._waited():.1f} s did not bring it back: {self.scrub(_first_line(err))}. Check "
                        "that the database is reachable (data.retries and data.retry_wait set the patience)."
                    ) from None
                log.warning(
                    "Reading %s from %s failed (%s); retrying in %.2f s (%d of %d).",
                    what, self.safe_url, self.scrub(_first_line(err)), wait, attempt + 1, self.retries,
                )  # fmt: skip
                time.sleep(wait)
                wait *= 2
        raise AssertionError("unreachable")

    def exact(self, sql: str, what: str) -> pa.Table:
        """:meth:`arrow`, but for SQLite through Python's ``sqlite3``: every value as stored. A column
        mixing numbers and text becomes text with each number written exactly, as a numeric column's
        values are (``1.0`` is ``'1'``); :meth:`arrow` reads this way where the driver would round or
        refuse a value."""
        if self.kind != "sqlite":
            return self.arrow(sql, what)
        import sqlite3

        try:
            with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10) as connection:
                cursor = connection.execute(sql)
                names = [d[0] for d in cursor.description]
                rows = cursor.fetchall()
        except sqlite3.Error as err:
            raise DataError(f"Reading {what} from {self.safe_url} failed: {err}") from None
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
        return pa.table([_exact_column(values) for values in columns], names=names)

    def _waited(self) -> float:
        return sum(self.retry_wait * 2**i for i in range(self.retries))


def _close_dead_threads() -> None:
    """Close this process's connections whose thread has ended (loader threads come and go)."""
    alive = {thread.ident for thread in threading.enumerate()}
    pid = os.getpid()
    for key in [k for k in _CONNECTIONS if k[0] == pid and k[1] not in alive]:
        with contextlib.suppress(Exception):
            _CONNECTIONS.pop(key).close()


def _fetch_typed(cursor: Any) -> pa.Table | None:
    """The result, or ``None`` where SQLite's driver met a value of another type than the column's first batch."""
    try:
        return cursor.fetch_arrow_table()
    except (OSError, pa.ArrowException) as err:
        if "Type mismatch" in str(err):
            return None
        raise


# How SQLite's driver writes a REAL into a text column (printf's %e): 7 significant digits.
_DRIVER_REAL = r"^-?[0-9]\.[0-9]{6}e[+-][0-9]{2,}$"


def _rounded(table: pa.Table) -> bool:
    """Whether a text column of ``table`` holds a number SQLite's driver wrote to 7 digits."""
    return any(
        pc.any(pc.match_substring_regex(column, _DRIVER_REAL)).as_py()
        for column in table.columns
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
    )


def _exact_column(values: Sequence[Any]) -> pa.Array:
    kinds = {type(v) for v in values if v is not None}
    if kinds <= {int, float} or kinds <= {str} or kinds <= {bytes}:
        return pa.array(values)
    # Numbers written as the driver's batches of a numeric column are (Split.strings): 1.0 is '1' in both.
    return pa.array([None if v is None else format_number(v) for v in values])


# What libpq and SQLite say when the connection, not the query, failed: worth a retry.
_LOST = re.compile(
    r"server closed the connection|terminating connection|failed to connect|connection to server|could not "
    r"connect|no connection to the server|connection reset|broken pipe|ssl syscall|timeout expired|the database "
    r"system is (starting up|shutting down)|database( table)? is locked|database is busy|disk i/o error",
    re.IGNORECASE,
)


def _lost(err: BaseException) -> bool:
    """Whether ``err`` says the connection was lost (or the database busy), rather than the query failed."""
    return _LOST.search(str(err)) is not None


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _message(err: BaseException) -> str:
    """A driver error's message without the echo of the query (ADBC appends it)."""
    text = str(err).strip()
    for marker in ("\nQuery was:", "\nquery:"):
        text = text.split(marker)[0]
    return " ".join(text.split())
