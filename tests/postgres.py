"""A throwaway PostgreSQL server in a temporary folder: what the tests and the SQL benchmark run against
(a test fixture, not part of the package: ``scripts/bench_sql.py`` imports it from here).

It uses the system's PostgreSQL programs (Debian's ``postgresql`` package: ``initdb`` and ``pg_ctl``,
found on ``PATH`` or in ``/usr/lib/postgresql/<version>/bin``), listens only on a Unix socket in its
own folder (no TCP port, nothing shared with other servers), trusts local connections, and is
removed when stopped. ``initdb`` refuses to run as root; as root the server runs as the ``postgres``
system user, which owns the folder.

Example:
    >>> with TemporaryPostgres() as server:  # doctest: +SKIP
    ...     SqlDataModule(server.url, table="readings", target="label")
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

INSTALL_HINT = "install Debian's postgresql package (apt-get install postgresql) or put initdb and pg_ctl on PATH"


def postgres_bin() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``, or ``None`` when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


class TemporaryPostgres:
    """Start a PostgreSQL server in a new temporary folder; ``url`` connects to its database ``chute``.

    Args:
        database: The database created for the caller.
        root: The folder to use (default: a new temporary one, removed by :meth:`stop`).
    """

    def __init__(self, database: str = "chute", root: str | None = None) -> None:
        self.database = database
        self._root = root
        self.root = Path()
        self.running = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@/{self.database}?host={self.root}&port=5432"

    def _run(self, *command: str) -> subprocess.CompletedProcess[str]:
        if os.geteuid() == 0:  # initdb and postgres refuse root
            command = ("runuser", "-u", "postgres", "--", *command)
        return subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)

    def start(self) -> TemporaryPostgres:
        folder = postgres_bin()
        if folder is None:
            raise RuntimeError(f"PostgreSQL is not installed here: {INSTALL_HINT}.")
        self.root = Path(self._root or tempfile.mkdtemp(prefix="chute-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        data = self.root / "data"
        steps = [
            (str(folder / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"),
            (
                str(folder / "pg_ctl"), "-D", str(data), "-l", str(self.root / "server.log"), "-w", "start", "-o",
                f"-k {self.root} -c listen_addresses='' -p 5432 -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off",
            ),
        ]  # fmt: skip
        for step in steps:
            done = self._run(*step)
            if done.returncode != 0:
                log = (self.root / "server.log").read_text() if (self.root / "server.log").exists() else ""
                raise RuntimeError(
                    f"{Path(step[0]).name} failed ({done.returncode}): {done.stderr or done.stdout}{log}"
                )
        self.running = True
        self.execute(f'CREATE DATABASE "{self.database}"', database="postgres")
        return self

    def execute(self, sql: str, database: str | None = None) -> list[tuple[Any, ...]]:
        """Run one statement (autocommit) and return its rows, if any."""
        import adbc_driver_postgresql.dbapi as postgresql

        url = self.url.replace(f"/{self.database}?", f"/{database or self.database}?")
        with postgresql.connect(url, autocommit=True) as connection, connection.cursor() as cursor:
            cursor.execute(sql)
            try:
                return [tuple(row) for row in cursor.fetchall()]
            except Exception:  # a statement without a result
                return []

    def stop(self) -> None:
        """Stop the server (immediately) and remove its folder."""
        folder = postgres_bin()
        if self.running and folder is not None:
            self._run(str(folder / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        self.running = False
        if self._root is None and self.root != Path():
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> TemporaryPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
