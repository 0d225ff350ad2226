"""Write any chute data option's train and val splits as JSONL shards for StreamingDataModule.

    python scripts/write_shards.py --out data/shards/digits data=digits
    python scripts/write_shards.py --out data/shards/seq --samples-per-shard 500 data=sequence
    python train.py data=streaming data.root=data/shards/digits data.prepare=null model=small_cnn

Everything after the options is a Hydra override of the training config, as for ``train.py``; the
data option is built exactly as training would build it. Image samples are written as decoded
``uint8`` tensors after the *eval* pipeline (deterministic, resized), with the normalization
statistics in the index, so a stream trains the same model.
"""

from __future__ import annotations

import argparse

from chute.app import build_datamodule
from chute.config import compose_config, validate_config
from chute.datasets import ShardedCopy, ShardIndex


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="shard folder to write")
    parser.add_argument("--samples-per-shard", type=int, default=256)
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=tabular")
    args = parser.parse_args()

    cfg = compose_config(*args.overrides)
    datamodule = build_datamodule(cfg, validate_config(cfg))
    # Shards hold the deterministic view: image training pipelines are random, so use the eval one.
    if getattr(datamodule, "train_transform", None) is not None:
        setattr(datamodule, "train_transform", getattr(datamodule, "val_transform", None))  # noqa: B010
    ShardedCopy(datamodule, args.samples_per_shard, args.splits)(args.out)
    index = ShardIndex.read(args.out)
    for split, shards in index.splits.items():
        print(f"{split}: {sum(n for _, n in shards):,} samples in {len(shards)} shards under {args.out}")


if __name__ == "__main__":
    main()
