"""The loader benchmark suite: classic data-loading experiments, side by side with the baseline.

    python scripts/benchmark.py                                   # every experiment
    python scripts/benchmark.py experiments=[workers] workers=[0,2]
    python scripts/benchmark.py -m batch_size=32,128              # a Hydra sweep

A Hydra app (settings in ``conf/benchmark/default.yaml``). Experiments, on the photo workload of
``chute.datasets.PhotoFolder`` (RandomResizedCrop(224) + flip, images delivered by the loader after
a warm-up epoch):

- ``workers``: images/s for each ``num_workers``, torchvision's ImageFolder + v1 transforms vs
  chute's on-the-fly pipeline (crop-aware JPEG decoding) in worker processes and in as many loader
  threads (``loader.backend=threads``);
- ``persistent``: time to the first batch of epoch 2 with and without persistent workers;
- ``precompute``: on-the-fly vs precomputed (memory-mapped cache, crop in the device hook), in
  worker processes and in loader threads;
- ``pin_memory``: host-to-device copy of a batch from pinned vs pageable memory (needs CUDA).

Each experiment writes ``<name>.csv`` and ``<name>.png`` into the run directory and prints a
Markdown table.
"""

from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from bench_images import baseline_loader, chute_module, measure
from chute.datasets import PhotoFolder


def _table(name: str, rows: list[dict[str, Any]], out: Path, value: str) -> None:
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\n### {name}\n\n| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(str(v) for v in row.values()) + " |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    ax.bar([str(r["setting"]) for r in rows], [float(r[value]) for r in rows])
    ax.set_ylabel(value.replace("_", " "))
    ax.set_title(name)
    ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=100)
    plt.close(fig)


def workers(cfg: DictConfig, root: Path) -> list[dict[str, Any]]:
    rows = []
    for n in cfg.workers:
        for label, make in (
            ("torchvision", lambda w=n: baseline_loader(root, w, cfg.batch_size)),
            ("chute", lambda w=n: chute_module(root, w, cfg.batch_size, None).train_dataloader()),
            ("chute threads", lambda w=n: chute_module(root, w, cfg.batch_size, None, "threads").train_dataloader()),
        ):
            if label == "chute threads" and n == 0:
                continue  # zero threads loads in the caller, like 0 workers
            rate = measure(make(), cfg.epochs)
            rows.append({"setting": f"{label} {n}w", "pipeline": label, "num_workers": n, "img_per_s": round(rate)})
    return rows


def persistent(cfg: DictConfig, root: Path) -> list[dict[str, Any]]:
    rows = []
    for keep in (False, True):
        dm = chute_module(root, cfg.persistent_workers, cfg.batch_size, None)
        dm.loader_settings.persistent_workers = keep
        loader = dm.train_dataloader()
        for _ in loader:  # epoch 1
            pass
        start = time.perf_counter()
        next(iter(loader))
        rows.append(
            {"setting": f"persistent={keep}", "num_workers": cfg.persistent_workers,
             "first_batch_epoch2_s": round(time.perf_counter() - start, 3)}
        )  # fmt: skip
    return rows


def precompute(cfg: DictConfig, root: Path) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as cache_dir:
        for n in cfg.precompute_workers:
            for label, cache in (("on the fly", None), ("precomputed", cache_dir)):
                for backend in ("torch", "threads") if n > 0 else ("torch",):
                    loader = chute_module(root, n, cfg.batch_size, cache, backend).train_dataloader()
                    unit = "t" if backend == "threads" else "w"
                    rows.append(
                        {"setting": f"{label} {n}{unit}", "backend": backend, "num_workers": n,
                         "img_per_s": round(measure(loader, cfg.epochs))}
                    )  # fmt: skip
    return rows


def pin_memory(cfg: DictConfig, root: Path) -> list[dict[str, Any]]:
    if not torch.cuda.is_available():
        print("\n### pin_memory\n\nskipped: no CUDA device")
        return []
    rows = []
    batch = torch.randint(0, 256, (cfg.batch_size, 3, 224, 224), dtype=torch.uint8)
    for pinned in (False, True):
        host = batch.pin_memory() if pinned else batch.clone()
        host.to("cuda", non_blocking=pinned)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(50):
            host.to("cuda", non_blocking=pinned)
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / 50
        rows.append({"setting": f"pinned={pinned}", "gb_per_s": round(batch.numel() / seconds / 1e9, 2)})
    return rows


EXPERIMENTS = {"workers": workers, "persistent": persistent, "precompute": precompute, "pin_memory": pin_memory}
VALUES = {
    "workers": "img_per_s",
    "persistent": "first_batch_epoch2_s",
    "precompute": "img_per_s",
    "pin_memory": "gb_per_s",
}


@hydra.main(config_path="../conf/benchmark", config_name="default", version_base="1.3")
def main(cfg: DictConfig) -> None:
    unknown = set(cfg.experiments) - set(EXPERIMENTS)
    if unknown:
        raise SystemExit(f"benchmark: unknown experiments {sorted(unknown)}; choose from {sorted(EXPERIMENTS)}")
    root = PhotoFolder()(cfg.root)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {torch.get_num_threads()} threads, CUDA: {torch.cuda.is_available()}, torch {torch.__version__}")
    for name in cfg.experiments:
        rows = EXPERIMENTS[name](cfg, root)
        if rows:
            _table(name, rows, out, VALUES[name])
    print(f"\nwrote CSV and PNG files to {out}")


if __name__ == "__main__":
    main()
