"""Summarize a finished sweep (or any folder of runs): the table and picture a multirun writes itself.

    python scripts/summarize_runs.py outputs/multirun/2026-11-24/10-00-00 [--metric val/acc --mode max]

Writes ``summary.csv``, ``summary.md`` and ``summary.png`` into the folder (see ``chute.sweep``,
whose Hydra callback does this at the end of every ``python train.py -m ...``) and prints the table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from chute.sweep import write_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--metric", default="val/acc")
    parser.add_argument("--mode", choices=["max", "min"], default="max")
    args = parser.parse_args()
    if not write_summary(args.root, args.metric, args.mode):
        raise SystemExit(f"no metrics.json under {args.root}")
    print((args.root / "summary.md").read_text())


if __name__ == "__main__":
    main()
