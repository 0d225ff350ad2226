"""What every benchmark script shares: the machine record and JSON/CSV/PNG output."""

from __future__ import annotations

import csv
import json
import os
import platform
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch


def machine() -> dict[str, Any]:
    """The facts a figure needs next to it: cores, CPU, SIMD level, GPU, torch version."""
    return {
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }


def count(loader: Iterable[Any], hook: Callable[[Any], Any] | None = None) -> int:
    """Samples of one pass over ``loader``, each batch through ``hook`` first (if given).

    Counts ``len(batch[0])`` per batch; with CUDA in use, returns after the device is done.
    """
    samples = 0
    for batch in loader:
        if hook is not None:
            batch = hook(batch)
        samples += len(batch[0])
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()  # the last copies and hooks are done when the clock stops
    return samples


def rate(loader: Iterable[Any], hook: Callable[[Any], Any] | None = None) -> float:
    """Samples per second of one pass over ``loader`` (see :func:`count`)."""
    start = time.perf_counter()
    return count(loader, hook) / (time.perf_counter() - start)


def alternate(loaders: dict[str, Any], rounds: int, measure: Callable[[Any], float]) -> dict[str, list[float]]:
    """``measure`` of each of ``loaders`` in turn, ``rounds`` times over (alternating, so that a machine
    that slows down or speeds up meanwhile weighs on each alike): every figure, by loader name."""
    figures: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(rounds):
        for name, loader in loaders.items():
            figures[name].append(measure(loader))
    return figures


def write_results(stem: Path, args: dict[str, Any], rows: list[dict[str, Any]], value: str, title: str) -> None:
    """Write ``stem.json`` (args, machine, rows), ``stem.csv`` and a bar chart of ``value`` per row."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    payload = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in args.items()}, "machine": machine()}
    Path(f"{stem}.json").write_text(json.dumps(payload | {"rows": rows}, indent=2))
    with open(f"{stem}.csv", "w", newline="") as f:
        fields = list(dict.fromkeys(key for row in rows for key in row))  # every row's keys, first seen first
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3))
    ax.bar([str(r["label"]) for r in rows], [float(r[value]) for r in rows])
    ax.set_ylabel(value.replace("_", " "))
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(f"{stem}.png", dpi=100)
    plt.close(fig)
    print(f"wrote {stem}.{{json,csv,png}}")
