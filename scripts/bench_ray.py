"""Images/s into a model with Ray doing the reading, against chute's own worker processes at the same CPU count.

    python scripts/bench_ray.py                         # 2 CPUs: 2 worker processes vs a 2-CPU Ray instance
    python scripts/bench_ray.py --cpus 1 2 --epochs 3 --engine tasks data  # Ray tasks and Ray Data both
    python scripts/bench_ray.py --cpus 15 --device cuda # a 16-core GPU machine: 15 workers vs Ray with 15 CPUs
    python scripts/bench_ray.py --cpus 15 --address auto  # Ray on a cluster started with `ray start`

Workload: the photo folder of ``scripts/bench_images.py`` (~1,800 JPEGs of 400-640 px written once
from scikit-image's sample photos), RandomResizedCrop(224) + flip decoded straight to the crop,
batch 64. The cases, each at ``N`` CPUs:

- ``chute workers``: ``ImageFolderDataModule`` with ``N`` DataLoader worker processes;
- ``chute on Ray`` (``--engine tasks``, the default): ``RayImagesDataModule``, the same folder,
  transforms and order, read by ``N`` Ray tasks at once on a local Ray instance of ``N`` CPUs (or
  the cluster at ``--address``);
- ``chute on Ray Data`` (``--engine data``): the same, read by a Ray Data pipeline
  (``map_batches`` with ``N`` tasks, order preserved).

Both figures of ``bench_images.py`` per case: **model receives** (as under ``Trainer``: on a CPU
trainer the batch hook runs where the batches are read, on a GPU after the copy) and **loader
only**; each the median of ``--epochs`` rounds of whole passes lasting at least ``--span``
seconds, so Ray's per-pass cost (planning and starting a pipeline each epoch) is counted as a
training run pays it. Ray's start-up (the instance and its workers importing torch) falls in the
warm-up pass and is reported apart (``first_pass_s``). The two cases read the same batches
(``tests/datamodules/test_ray_images.py``), so the ratio is the cost or gain of Ray alone.
Writes JSON and CSV to outputs/benchmarks/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_images import chute_module, measure, on_trainer
from benchlib import write_results
from chute.datamodules import RayImagesDataModule
from chute.datasets import PhotoFolder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("data/photos"))
    parser.add_argument("--cpus", type=int, nargs="+", default=[2], help="worker processes = Ray CPUs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3, help="timed rounds (median); each at least --span s")
    parser.add_argument("--span", type=float, default=3.0, help="seconds of whole passes per timed round")
    parser.add_argument("--address", default=None, help="a running Ray cluster (default: a local instance)")
    parser.add_argument("--device", default="cpu", help="where the model is: cpu, or cuda")
    parser.add_argument("--engine", nargs="+", default=["tasks"], choices=["tasks", "data"], help="Ray engines")
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"))
    args = parser.parse_args()
    device = torch.device(args.device)
    root = PhotoFolder()(args.root)

    import ray

    rows: list[dict[str, Any]] = []
    for cpus in args.cpus:
        cases = [("workers", "chute workers")] + [
            (engine, {"tasks": "chute on Ray", "data": "chute on Ray Data"}[engine]) for engine in args.engine
        ]
        for kind, label in cases:
            torch.manual_seed(0)
            ray_args = {
                "cls": RayImagesDataModule, "address": args.address, "num_cpus": None if args.address else cpus,
                "engine": kind,
            }  # fmt: skip
            dm = chute_module(root, cpus, args.batch_size, None, **(ray_args if kind != "workers" else {}))
            row: dict[str, Any] = {"label": f"{label}\n{cpus} CPUs", "case": label, "cpus": cpus}
            loader = dm.train_dataloader()
            start = time.perf_counter()
            for _ in loader:  # start-up: workers fork / Ray starts and its workers import torch
                pass
            row["first_pass_s"] = round(time.perf_counter() - start, 2)
            row["loader_img_per_s"] = round(measure(loader, args.epochs, span=args.span))
            del loader
            loader, hook = on_trainer(dm, device)
            row["model_img_per_s"] = round(measure(loader, args.epochs, hook, args.span))
            del loader, dm
            if kind != "workers" and args.address is None:
                ray.shutdown()  # the next CPU count gets an instance of its size
            rows.append(row)
            print(f"  measured: {label}, {cpus} CPUs: model receives {row['model_img_per_s']:,} img/s, loader only "
                  f"{row['loader_img_per_s']:,} img/s (first pass {row['first_pass_s']} s)", flush=True)  # fmt: skip
    for row in rows:
        base = next(r for r in rows if r["cpus"] == row["cpus"] and r["case"] == "chute workers")
        row["model_vs_workers"] = round(row["model_img_per_s"] / base["model_img_per_s"], 2)
        row["loader_vs_workers"] = round(row["loader_img_per_s"] / base["loader_img_per_s"], 2)
        print(f"{row['case']:>14} | {row['cpus']} CPUs | model receives {row['model_img_per_s']:>6,} img/s "
              f"({row['model_vs_workers']:.2f}x workers) | loader only {row['loader_img_per_s']:>6,} img/s "
              f"({row['loader_vs_workers']:.2f}x)")  # fmt: skip
    write_results(args.out / "ray", vars(args), rows, "model_img_per_s", "Ray vs chute's workers")


if __name__ == "__main__":
    main()
