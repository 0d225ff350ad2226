"""Precompute an image data option's disk cache: decoded, resized uint8 images in one memory map.

    python scripts/build_cache.py data=image_folder data.root=/data/photos data.cache=disk data.cache_size=256
    python train.py data=image_folder data.root=/data/photos data.cache=disk data.cache_size=256 \\
        data.device_augment=true                      # later runs map the files, nothing is decoded

Everything after the options is a Hydra override of the training config, as for ``train.py``; the
data option is built exactly as training builds it, so the cache's fingerprint (files, sizes,
modification times and the deterministic pipeline) matches and training reuses it. Per split the
cache folder holds the raw arrays (images, labels) and a JSON manifest (shapes, dtypes, the
fingerprint). Training sets run the random crop on top (in the device hook with
``data.device_augment=true``); evaluation splits store the whole eval pipeline's output.
``prepare_data`` builds the same cache automatically when ``data.cache=disk``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from chute.app import build_datamodule
from chute.config import compose_config, validate_config
from chute.datasets.cache_store import MANIFEST


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=image_folder data.root=...")
    args = parser.parse_args()

    cfg = compose_config(*args.overrides)
    datamodule = build_datamodule(cfg, validate_config(cfg))
    build = getattr(datamodule, "build_cache", None)
    if build is None:
        raise SystemExit(f"{type(datamodule).__name__} has no disk cache; use an image data option")
    datamodule.prepare_data()  # writes the tree first for options that generate their data
    started = time.perf_counter()
    folders = build(args.splits)
    for split, folder in folders.items():
        with open(os.path.join(folder, MANIFEST)) as f:
            manifest = json.load(f)
        size = sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder))
        print(f"{split}: {manifest.get('length', '?')} samples, {size / 2**20:,.1f} MiB in {folder}")
    print(f"ready in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
