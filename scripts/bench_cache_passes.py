"""Images/s and page faults of each pass over a just-built disk cache (loader only, no hook).

    python scripts/bench_cache_passes.py                    # 2 loader threads
    python scripts/bench_cache_passes.py --backend torch    # 2 worker processes
    python scripts/bench_cache_passes.py --populate         # pre-fault the cache's mapping first

Builds the precomputed photo cache of ``bench_images.py`` (256 px, ``uint8``) in a temporary
folder, then times ``--passes`` passes of the training loader, with the minor and major page
faults of this process (and of worker processes) in each. It answers why the first passes over a
new cache are slower than later ones.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_images import chute_module
from chute.datasets import PhotoFolder

MADV_POPULATE_READ = 22  # Linux 5.14+: fault a mapping's pages in now, read-only


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("data/photos"))
    parser.add_argument("--backend", choices=["threads", "torch"], default="threads")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--populate", action="store_true", help="madvise(MADV_POPULATE_READ) on the cache first")
    args = parser.parse_args()
    root = PhotoFolder()(args.root)
    with tempfile.TemporaryDirectory() as cache_dir:
        dm = chute_module(root, args.workers, 64, cache_dir, backend=args.backend)
        loader = dm.train_dataloader()
        if args.populate:
            for array in getattr(loader.dataset, "arrays", []):
                if isinstance(array, np.memmap):
                    array._mmap.madvise(MADV_POPULATE_READ)  # type: ignore[attr-defined]
        os.sync()  # the new cache's pages are written back before timing
        for p in range(args.passes):
            own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
            start, images = time.perf_counter(), 0
            for batch in loader:
                images += len(batch[0])
            seconds = time.perf_counter() - start
            own2, kids2 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
            print(
                f"pass {p}: {images / seconds:>8,.0f} img/s | minor faults {own2.ru_minflt - own.ru_minflt:>7,} "
                f"(workers {kids2.ru_minflt - kids.ru_minflt:,}) | major {own2.ru_majflt - own.ru_majflt}"
            )


if __name__ == "__main__":
    main()
