"""Collect ``metrics.json`` of every run under a folder (e.g. a Hydra multirun) into one table.

    python scripts/summarize_runs.py outputs/multirun/2026-11-24/10-00-00

Prints a Markdown table and writes ``summary.csv`` next to the runs. Columns: the overrides that
differ between runs, then val accuracy, train samples/s and wall time.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def collect(root: Path) -> list[dict[str, object]]:
    rows = []
    for metrics_file in sorted(root.rglob("metrics.json")):
        run = metrics_file.parent
        metrics = json.loads(metrics_file.read_text())
        overrides_file = run / ".hydra" / "overrides.yaml"
        overrides = overrides_file.read_text().splitlines() if overrides_file.exists() else []
        row: dict[str, object] = {"run": str(run.relative_to(root)) or "."}
        row["overrides"] = " ".join(o.removeprefix("- ").strip() for o in overrides)
        row["val_acc"] = metrics["metrics"].get("val/acc")
        row["best_val_acc"] = metrics.get("best_val/acc")
        row["train_samples_per_s"] = metrics.get("train_samples_per_s")
        row["wall_time_s"] = metrics.get("wall_time_s")
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    args = parser.parse_args()
    rows = collect(args.root)
    if not rows:
        raise SystemExit(f"no metrics.json under {args.root}")
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")
    with open(args.root / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
