"""CPU seconds the training loader of an experiment spends per epoch, and where (cProfile).

    python scripts/loader_cpu.py                          # the default experiment (digits)
    python scripts/loader_cpu.py data=image_folder data.root=data/photos --top 15

Builds the DataModule exactly as ``train.py`` would from the same overrides, then iterates its
training loader in this process (``loader.num_workers=0`` unless overridden, so every CPU second
is counted here) for ``--epochs`` epochs after one warm-up epoch, including the batch hook
(``on_after_batch_transfer``: normalization and any batch augmentation) on the CPU. Reports CPU
seconds and wall seconds per epoch and, with ``--top N``, the N functions with the most own time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time

from chute.app import build_datamodule
from chute.config import compose_config, validate_config
from chute.datamodules import ChuteDataModule


def one_epoch(dm: ChuteDataModule, epoch: int) -> tuple[float, float, int]:
    loader = dm.train_dataloader()
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    cpu, wall, samples = time.process_time(), time.perf_counter(), 0
    for batch in loader:
        batch = dm.on_after_batch_transfer(batch, 0)
        samples += len(batch[0])
    return time.process_time() - cpu, time.perf_counter() - wall, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--top", type=int, default=0, help="print the N functions with the most own time")
    args = parser.parse_args()
    overrides = list(args.overrides)
    if not any(o.startswith("loader.num_workers=") for o in overrides):
        overrides.append("loader.num_workers=0")
    cfg = compose_config(*overrides)
    dm = build_datamodule(cfg, validate_config(cfg))
    dm.prepare_data()
    dm.setup("fit")
    one_epoch(dm, 0)  # warm-up: caches, page cache, lazy imports
    runs = [one_epoch(dm, epoch) for epoch in range(1, args.epochs + 1)]
    cpu = [r[0] for r in runs]
    wall = [r[1] for r in runs]
    print(f"overrides: {' '.join(overrides)}")
    print(f"samples per epoch: {runs[0][2]}")
    print(f"loader CPU s/epoch: median {statistics.median(cpu):.3f} (min {min(cpu):.3f}, max {max(cpu):.3f})")
    rate = runs[0][2] / statistics.median(wall)
    print(f"loader wall s/epoch: median {statistics.median(wall):.3f}; {rate:,.0f} samples/s")
    if args.top:  # one more epoch under the profiler (which inflates times; the figures above are without)
        profile = cProfile.Profile()
        profile.enable()
        one_epoch(dm, args.epochs + 1)
        profile.disable()
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(args.top)
        print(out.getvalue())


if __name__ == "__main__":
    main()
