"""scikit-learn's bundled tables (breast cancer, wine, iris, diabetes) written out as CSV or Parquet files.

The CSVs inside scikit-learn have a custom header line and no column names; these writers add the
names and readable targets so the files look like what users bring. Nothing is downloaded.
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from chute.errors import ConfigError

SKLEARN_TABLES = ("breast_cancer", "wine", "iris", "diabetes")


def sklearn_table(name: str) -> pa.Table:
    """One of :data:`SKLEARN_TABLES` as an Arrow table with named columns.

    ``breast_cancer``: 30 measurements and ``diagnosis`` (``malignant``/``benign``).
    ``wine``/``iris``: measurements and ``cultivar``/``species`` names.
    ``diabetes``: ``age``, ``sex`` (1/2, categorical), ``bmi``, ``bp``, six blood serum measurements
    ``s1``-``s6`` (unscaled) and ``progression`` (disease progression one year later, a number).
    """
    from sklearn import datasets

    if name not in SKLEARN_TABLES:
        raise ConfigError("name", name, f"must be one of {list(SKLEARN_TABLES)}")
    if name == "diabetes":
        bunch: Any = datasets.load_diabetes(scaled=False)
        columns = {str(c): bunch.data[:, i] for i, c in enumerate(bunch.feature_names)}
        columns["sex"] = bunch.data[:, 1].astype(np.int64)
        columns["progression"] = bunch.target
        return pa.table(columns)
    loader = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine, "iris": datasets.load_iris}
    bunch = loader[name]()
    target = {"breast_cancer": "diagnosis", "wine": "cultivar", "iris": "species"}[name]
    columns = {_snake(c): bunch.data[:, i] for i, c in enumerate(bunch.feature_names)}
    columns[target] = np.asarray(bunch.target_names)[bunch.target]
    return pa.table(columns)


def _snake(name: str) -> str:
    return "_".join(name.replace("(", " ").replace(")", " ").replace("/", " ").split()).lower()


class SklearnTable:
    """Writes a bundled scikit-learn table to a ``.csv`` or ``.parquet`` path, once (atomically).

    Args:
        name: One of ``breast_cancer``, ``wine``, ``iris``, ``diabetes``.
        only_at: Write only when called with this location (the config's own default path); a
            DataModule pointed elsewhere reads the data found there and writes nothing
            (:meth:`~chute.datamodules.base.ChuteDataModule.run_prepare`). ``None``: write anywhere.

    Example:
        >>> import tempfile
        >>> path = SklearnTable("wine")(tempfile.mkdtemp() + "/wine.csv")
        >>> path.read_text().splitlines()[0].split(",")[:2]
        ['alcohol', 'malic_acid']
    """

    def __init__(self, name: str = "breast_cancer", *, only_at: str | None = None) -> None:
        if name not in SKLEARN_TABLES:
            raise ConfigError("name", name, f"must be one of {list(SKLEARN_TABLES)}")
        self.name, self.only_at = name, only_at

    def __repr__(self) -> str:
        return f"SklearnTable({self.name!r})"

    def __call__(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        if path.is_file() and path.stat().st_size > 0:
            return path
        write_table(sklearn_table(self.name), path)
        return path


def write_table(table: pa.Table, path: str | os.PathLike[str]) -> None:
    """Write ``table`` as CSV or Parquet (by suffix) through a temporary file renamed into place."""
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        if path.suffix in (".parquet", ".pq"):
            pq.write_table(table, tmp)
        else:  # the csv module quotes only where needed (Arrow's writer quotes every header name)
            with open(tmp, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(table.column_names)
                columns = [column.to_pylist() for column in table.columns]
                writer.writerows(zip(*columns, strict=True))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class SklearnSqlite:
    """Writes a bundled scikit-learn table into a SQLite file as table ``table`` (default: ``name``),
    with an integer key column ``id`` (1..n), once (atomically): ``SqlDataModule``'s ``prepare``.

    Args:
        name: One of ``breast_cancer``, ``wine``, ``iris``, ``diabetes``.
        table: The table's name in the file.
        only_at: Write only when called with this database URL (the config's own default); a
            DataModule pointed elsewhere reads the data found there and writes nothing
            (:meth:`~chute.datamodules.base.ChuteDataModule.run_prepare`). ``None``: write anywhere.
    """

    def __init__(self, name: str, table: str | None = None, *, only_at: str | None = None) -> None:
        if name not in SKLEARN_TABLES:
            raise ConfigError("name", name, f"must be one of {list(SKLEARN_TABLES)}")
        self.name = name
        self.table = table or name
        self.only_at = only_at

    def __call__(self, url: str) -> None:
        from chute.datasets.database import Database
        from chute.datasets.sql_ingest import ingest

        path = Path(Database(url).path)
        if path.is_file():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.remove(tmp)  # SQLite makes the file itself
        try:
            ingest(sklearn_table(self.name), f"sqlite:///{os.path.abspath(tmp)}", self.table)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
