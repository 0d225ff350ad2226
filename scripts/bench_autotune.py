"""How ``loader.num_workers=auto`` compares with an exhaustive sweep of the same candidates.

    python scripts/bench_autotune.py                  # photos, on-the-fly 224 px pipeline
    python scripts/bench_autotune.py --epochs 2

The sweep times every candidate (worker processes x prefetch depth, and loader threads) over full
epochs after a warm-up epoch; the autotuner probes each for ~1 s. ``--precomputed`` tunes the
precomputed-cache pipeline (``cache=disk``, ``device_augment``) instead of on-the-fly decoding.
Reports the pick's steady throughput against the sweep's best and the time each search took.
Writes JSON, CSV and PNG to outputs/benchmarks/.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

from benchlib import write_results
from chute.autotune import candidates
from chute.datamodules import ImageFolderDataModule
from chute.datasets import PhotoFolder
from chute.loader import LoaderSettings
from chute.transforms import create_transforms


def epoch_rate(loader: Any) -> float:
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch[0])
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("data/photos"))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--precomputed", action="store_true", help="tune the precomputed-cache pipeline")
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"))
    args = parser.parse_args()

    t = create_transforms(image_size=224, crop_pct=0.875)
    extra: dict[str, Any] = {}
    if args.precomputed:
        extra = {"cache": "disk", "cache_size": 256, "device_augment": True, "train_batch_transform": t.train_batch}
    dm = ImageFolderDataModule(
        PhotoFolder()(args.root), train_transform=t.train, val_transform=t.val, mean=[0.5] * 3, std=[0.25] * 3,
        loader={"batch_size": 64, "num_workers": "auto"}, **extra,
    )  # fmt: skip
    dm.setup("fit")
    started = time.perf_counter()
    dm.train_dataloader()  # runs the autotuner
    tune_s = time.perf_counter() - started
    assert dm.tuned_loader is not None
    pick = (dm.tuned_loader.backend, dm.tuned_loader.num_workers, dm.tuned_loader.prefetch_factor)

    rows = []
    started = time.perf_counter()
    for candidate in candidates(LoaderSettings(batch_size=64)):
        processes = candidate.backend == "torch" and candidate.num_workers > 0
        settings = dataclasses.replace(candidate, persistent_workers=True if processes else None)
        dm.tuned_loader = settings  # build exactly this setting
        loader = dm.train_dataloader()
        epoch_rate(loader)  # warm-up epoch
        rate = statistics.median(epoch_rate(loader) for _ in range(args.epochs))
        key = (settings.backend, settings.num_workers, settings.prefetch_factor)
        kind = "t" if key[0] == "threads" else "w"
        rows.append(
            {"label": f"{kind}{key[1]}/p{key[2] or '-'}", "backend": key[0], "num_workers": key[1],
             "prefetch_factor": key[2], "epoch_img_per_s": round(rate), "picked": key == pick}
        )  # fmt: skip
        del loader
    sweep_s = time.perf_counter() - started
    best = max(rows, key=lambda r: r["epoch_img_per_s"])
    picked = next(r for r in rows if r["picked"])
    for row in rows:
        mark = " <- autotune" if row["picked"] else (" <- best" if row is best else "")
        print(f"{row['label']:>8}: {row['epoch_img_per_s']:>6,} img/s{mark}")
    print(
        f"autotune picked {picked['label']} at {picked['epoch_img_per_s'] / best['epoch_img_per_s']:.0%} of the best "
        f"({best['label']}), searching {tune_s:.1f} s vs {sweep_s:.1f} s for the sweep ({tune_s / sweep_s:.0%})"
    )
    for row in rows:
        row["tune_s"], row["sweep_s"] = round(tune_s, 1), round(sweep_s, 1)
    name = "autotune_precomputed" if args.precomputed else "autotune"
    write_results(args.out / name, vars(args), rows, "epoch_img_per_s", "steady epoch throughput per setting")


if __name__ == "__main__":
    main()
