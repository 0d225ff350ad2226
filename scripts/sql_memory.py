"""Peak memory of SqlDataModule's two key indexes on a large table: ``index=memory`` vs ``index=stream``.

    python scripts/sql_memory.py                 # 20M rows in a SQLite file, 50 training batches each
    python scripts/sql_memory.py --rows 5000000 --batches 20

Writes a SQLite table of ``--rows`` rows (integer key ``id``, one number, a two-class label), then,
in a fresh process per index, builds the DataModule, runs ``setup("fit")`` (the encoding is fitted
on a sample of 200,000 rows) and reads ``--batches`` training batches of 4,096 rows in the main
process. Reports each process's peak resident memory above what it held after its imports
(``VmHWM`` reset after the imports) and the time to the first batch. ``index=memory`` holds the keys of the epoch's
snapshot (8 bytes a row, plus what reading and sorting them takes); ``index=stream`` holds key
ranges and its shuffle buffer.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time


def status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory figure (``VmRSS``, ``VmHWM``: the peak) in MB."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024  # kB


def reset_peak() -> float:
    """Start the peak (``VmHWM``) again from the current resident memory (Linux >= 4.0); returns that."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    return status_mb("VmRSS")


def child(url: str, index: str, batches: int) -> None:
    from chute.datamodules import SqlDataModule

    floor = reset_peak()  # the imports' own peak would hide a smaller one
    start = time.perf_counter()
    dm = SqlDataModule(url, table="big", target="label", numeric=["x"], index=index,  # type: ignore[arg-type]
                       loader={"batch_size": 4096})  # fmt: skip
    dm.setup("fit")
    loader = dm.train_dataloader()
    iterator = iter(loader)
    next(iterator)
    first = time.perf_counter() - start
    for _ in range(batches - 1):
        next(iterator)
    print(json.dumps({"index": index, "peak_mb": round(status_mb("VmHWM") - floor, 1), "first_batch_s": round(first, 2),
                      "batches": len(loader)}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return

    import numpy as np
    import pyarrow as pa

    from chute.datasets.sql_ingest import ingest

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/big.db"
        start = time.perf_counter()
        ids = np.arange(1, args.rows + 1)
        labels = pa.DictionaryArray.from_arrays(pa.array(ids % 2, pa.int8()), pa.array(["a", "b"])).cast(pa.string())
        ingest(pa.table({"id": ids, "x": (ids % 1000) / 10.0, "label": labels}), url, "big")
        print(f"wrote {args.rows:,} rows in {time.perf_counter() - start:.0f} s")
        for index in ("memory", "stream"):
            run = subprocess.run(
                [sys.executable, __file__, "--child", url, index, str(args.batches)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            print(run.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
