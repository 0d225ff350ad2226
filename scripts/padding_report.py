"""Padding waste (pad tokens / real tokens) of a SequenceDataModule, with and without length bucketing.

    python scripts/padding_report.py                          # the default data (data=sequence)
    python scripts/padding_report.py --root /path/to/jsonl --batch-size 32

Counts what one epoch's batches would hold when each pads to its own longest sequence.
"""

from __future__ import annotations

import argparse

from chute.datamodules import SequenceDataModule
from chute.datasets import LengthMajoritySequences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="data/length_majority")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--pool-batches", type=int, default=50)
    args = parser.parse_args()

    prepare = LengthMajoritySequences() if args.root == "data/length_majority" else None
    dm = SequenceDataModule(
        args.root, prepare=prepare, pool_batches=args.pool_batches, loader={"batch_size": args.batch_size}
    )
    dm.prepare_data()
    dm.setup("fit")
    print(f"batch size {args.batch_size}, pool {args.pool_batches} batches")
    print("| split | sequences | random batches | length-bucketed |")
    print("|---|---|---|---|")
    for split in ("train", "val"):
        plain, bucketed = dm.padding_waste(split, bucket=False), dm.padding_waste(split, bucket=True)
        print(f"| {split} | {len(dm.dataset(split)):,} | {plain:.1%} | {bucketed:.1%} |")


if __name__ == "__main__":
    main()
