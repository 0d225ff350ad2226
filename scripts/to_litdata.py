"""Convert any chute data option's train and val splits into LitData chunks for LitDataModule.

    python scripts/to_litdata.py --out data/litdata/digits data=digits
    python scripts/to_litdata.py --out data/litdata/seq --chunk-size 2048 data=sequence
    python train.py data=litdata data.input_dir=data/litdata/digits data.prepare=null model=small_cnn

Everything after the options is a Hydra override of the training config, as for ``train.py``; the
data option is built exactly as training would build it. Image samples are stored as decoded
``uint8`` tensors after the *eval* pipeline (deterministic, resized), with the normalization
statistics in ``chute.json``, so the chunks train the same model. The output is a local folder
(``<out>/<split>/`` chunks + LitData's ``index.json``, ``<out>/chute.json``); to stream from an
object store, copy the folder up as it is (``aws s3 sync OUT s3://bucket/prefix``) and train with
``data.input_dir=s3://bucket/prefix``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from chute.app import build_datamodule
from chute.config import compose_config, validate_config
from chute.integrations import LitDataCopy
from chute.integrations.litdata_format import read_chunks_meta


def convert(
    overrides: Sequence[str], out: str | Path, chunk_size: int = 1024, splits: Sequence[str] = ("train", "val")
) -> dict[str, int]:
    """Write the data option ``overrides`` select as LitData chunks under ``out``; returns samples per split."""
    cfg = compose_config(*overrides)
    datamodule = build_datamodule(cfg, validate_config(cfg))
    # Chunks hold the deterministic view: image training pipelines are random, so use the eval one.
    if getattr(datamodule, "train_transform", None) is not None:
        setattr(datamodule, "train_transform", getattr(datamodule, "val_transform", None))  # noqa: B010
    root = LitDataCopy(datamodule, chunk_size, splits)(out)
    return {str(k): int(v) for k, v in read_chunks_meta(str(root), str(root)).get("splits", {}).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="local folder to write")
    parser.add_argument("--chunk-size", type=int, default=1024, help="samples per chunk (aim for tens of MB)")
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=tabular")
    args = parser.parse_args()
    for split, count in convert(args.overrides, args.out, args.chunk_size, args.splits).items():
        print(f"{split}: {count:,} samples under {Path(args.out) / split}")


if __name__ == "__main__":
    main()
