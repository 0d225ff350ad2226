"""Load a CSV, TSV or Parquet file into a SQLite or PostgreSQL table, for SqlDataModule.

    python scripts/load_table.py data/readings.csv sqlite:///data/readings.db readings
    python scripts/load_table.py rows.parquet "postgresql://ana@db.lab:5432/train" readings --if-exists append
    python train.py data=sql data.url=sqlite:///data/readings.db data.table=readings data.target=label

The file is read as TabularDataModule reads it (typed columns, empty cells as NULL) and written in
one bulk load (PostgreSQL's COPY), with a unique index on the key column. A file without the key
column gets one: 1..n in file order (``--if-exists append`` continues after the table's largest
key). Keep passwords out of the URL (PGPASSWORD or ~/.pgpass); a URL's password is never printed.
"""

from __future__ import annotations

import argparse

from chute.datasets.database import redact
from chute.datasets.sql_ingest import load_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="the .csv, .tsv (optionally .gz) or .parquet file")
    parser.add_argument("url", help="sqlite:///file.db or postgresql://user@host:port/db")
    parser.add_argument("table", help="the table to write (schema.table allowed)")
    parser.add_argument("--key", default="id", help="the integer key column (added when the file has none)")
    parser.add_argument("--if-exists", default="fail", choices=("fail", "replace", "append"))
    parser.add_argument("--encoding", default="utf-8", help="the CSV file's text encoding")
    args = parser.parse_args()
    written = load_table(
        args.path, args.url, args.table, key=args.key, if_exists=args.if_exists, encoding=args.encoding
    )
    print(f"{written} rows of '{args.path}' written to table '{args.table}' at {redact(args.url)}")


if __name__ == "__main__":
    main()
