"""Balanced accuracy and macro-F1 per imbalance strategy, averaged over seeds, from a Hydra multirun.

    python train.py -m experiment=longtail \\
        imbalance=none,weighted_sampler,balanced_batches,loss_weights,oversample,undersample seed=1,2,3
    python scripts/imbalance_report.py outputs/multirun/<date>/<time>

Reads each run's ``metrics.json`` (final-epoch validation metrics: the same budget for every
strategy), prints a Markdown table (mean, standard deviation over seeds, and the gain over
``none``), and writes ``imbalance.csv`` and ``imbalance.png`` (bars with seed spread) into the folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path

METRICS = ("val/bal_acc", "val/macro_f1", "val/acc")


def collect(root: Path) -> dict[str, list[dict[str, float]]]:
    runs: dict[str, list[dict[str, float]]] = defaultdict(list)
    for path in sorted(root.rglob("metrics.json")):
        metrics = json.loads(path.read_text())
        strategy = str(metrics.get("imbalance", "none"))
        runs[strategy].append({k: float(metrics["metrics"][k]) for k in METRICS} | {"seed": metrics["seed"]})
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    args = parser.parse_args()
    runs = collect(args.root)
    if "none" not in runs:
        raise SystemExit(f"no run with imbalance=none under {args.root}")
    rows = []
    for strategy, results in runs.items():
        row: dict[str, object] = {"strategy": strategy, "seeds": len(results)}
        for metric in METRICS:
            values = [r[metric] for r in results]
            row[f"{metric}_mean"] = round(statistics.mean(values), 4)
            row[f"{metric}_std"] = round(statistics.stdev(values), 4) if len(values) > 1 else 0.0
        rows.append(row)
    base = next(r for r in rows if r["strategy"] == "none")
    print("| strategy | seeds | balanced accuracy | macro-F1 | accuracy | bal. acc. vs none |")
    print("|---|---|---|---|---|---|")
    for row in sorted(rows, key=lambda r: -float(r["val/bal_acc_mean"])):  # type: ignore[arg-type]
        gain = float(row["val/bal_acc_mean"]) - float(base["val/bal_acc_mean"])  # type: ignore[arg-type]
        cells = [f"{row[f'{m}_mean']:.4f} ± {row[f'{m}_std']:.4f}" for m in METRICS]
        print(f"| {row['strategy']} | {row['seeds']} | {' | '.join(cells)} | {gain:+.4f} |")
    with open(args.root / "imbalance.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _plot(rows, args.root / "imbalance.png")
    print(f"wrote {args.root / 'imbalance.csv'} and imbalance.png")


def _plot(rows: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(rows, key=lambda r: -float(r["val/bal_acc_mean"]))  # type: ignore[arg-type]
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    x = range(len(order))
    for offset, metric, label in ((-0.2, "val/bal_acc", "balanced accuracy"), (0.2, "val/macro_f1", "macro-F1")):
        means = [float(r[f"{metric}_mean"]) for r in order]  # type: ignore[arg-type]
        stds = [float(r[f"{metric}_std"]) for r in order]  # type: ignore[arg-type]
        ax.bar([i + offset for i in x], means, width=0.4, yerr=stds, capsize=3, label=label)
    ax.set_xticks(list(x), [str(r["strategy"]) for r in order], rotation=20)
    low = min(float(r["val/macro_f1_mean"]) for r in order) - 0.05  # type: ignore[arg-type]
    ax.set_ylim(max(0.0, low), 1.0)
    ax.set_title("long-tailed digits (ratio 20), mean ± std over seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
