"""Sweeps end with an answer: one table and one picture of a multirun's jobs.

:class:`SweepSummary` is a Hydra callback (``hydra.callbacks`` in ``conf/train.yaml``): when a
multirun ends it reads every job's ``metrics.json`` and ``.hydra/overrides.yaml`` under the sweep
folder and writes there

- ``summary.csv`` and ``summary.md``: one row per job, best first, with the overrides that vary
  between jobs (not those every job shares), the optimized metric, train samples/s, the data-wait
  fraction and wall time;
- ``summary.png``: the optimized metric per job and its throughput, labelled by those overrides.

``python scripts/summarize_runs.py <sweep folder>`` does the same for a finished sweep.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

COLUMNS = ("train_samples_per_s", "data_wait_fraction", "loader_wait_fraction", "wall_time_s")


def collect(root: Path, metric: str = "val/acc") -> list[dict[str, Any]]:
    """One row per job under ``root``: ``job``, its overrides (``key=value`` as a dict), ``metric``
    (the best value the job reported, else its last) and :data:`COLUMNS`."""
    rows = []
    for metrics_file in sorted(root.rglob("metrics.json"), key=lambda p: _job_order(p.parent, root)):
        run = metrics_file.parent
        metrics = json.loads(metrics_file.read_text())
        overrides_file = run / ".hydra" / "overrides.yaml"
        pairs = (
            [o.removeprefix("- ").strip() for o in overrides_file.read_text().splitlines()]
            if overrides_file.exists()
            else []
        )
        overrides = dict(p.split("=", 1) for p in pairs if "=" in p)
        # The job's own optimized metric (a data option may set another: multitask's val/loss, min).
        own = [key.removeprefix("best_") for key in metrics if key.startswith("best_")]
        job_metric = own[0] if len(own) == 1 else metric
        value = metrics.get(f"best_{metric}", metrics.get("metrics", {}).get(metric))
        row: dict[str, Any] = {"job": str(run.relative_to(root)) or ".", "overrides": overrides, metric: value}
        row["metric"], row["mode"] = job_metric, _job_mode(run)
        row["value"] = metrics.get(f"best_{job_metric}", metrics.get("metrics", {}).get(job_metric))
        row["seed"] = metrics.get("seed")  # the seed the job used (drawn, under seed=null)
        row.update({key: metrics.get(key) for key in COLUMNS})
        rows.append(row)
    return rows


def _job_mode(run: Path) -> str | None:
    """The job's ``optimized_mode`` (``min`` or ``max``) from its saved config, if it has one."""
    try:
        saved = OmegaConf.load(run / ".hydra" / "config.yaml")
        mode = saved.get("optimized_mode") if isinstance(saved, DictConfig) else None
    except Exception:  # no saved config (or not one of chute's): the sweep's mode stands
        return None
    return str(mode) if mode in ("min", "max") else None


def _job_order(run: Path, root: Path) -> tuple[Any, ...]:
    parts = run.relative_to(root).parts
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def varying(rows: list[dict[str, Any]]) -> list[str]:
    """The override keys whose value is not the same in every job (in first-seen order)."""
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row["overrides"]))
    return [k for k in keys if len({row["overrides"].get(k) for row in rows}) > 1]


def write_summary(root: Path, metric: str = "val/acc", mode: str = "max") -> list[dict[str, Any]]:
    """Write ``summary.csv``, ``summary.md`` and ``summary.png`` into ``root``; return the rows, best first."""
    rows = collect(root, metric)
    if not rows:
        return rows
    keys = varying(rows)
    metrics = sorted({row["metric"] for row in rows})
    several = len(metrics) > 1  # jobs of different data options: each ranked by its own metric
    if not several and metrics[0] != metric:  # every job optimized another metric than the sweep's
        metric, mode = metrics[0], next((row["mode"] for row in rows if row["mode"]), mode)

    def job_mode(row: dict[str, Any]) -> str:
        return (row["mode"] or mode) if several else mode

    def score(row: dict[str, Any]) -> tuple[str, float]:
        value = row["value"]
        if not isinstance(value, (int, float)) or math.isnan(value):
            return (row["metric"], math.inf)
        return (row["metric"], -value if job_mode(row) == "max" else value)

    rows.sort(key=score)
    # The seeds the jobs used, where they differ without a seed override saying so (seed=null draws one
    # per job: the value to repeat a job with).
    seeds = ["seed"] if "seed" not in keys and len({row.get("seed") for row in rows}) > 1 else []
    judged = ["metric", "best"] if several else [metric]
    header = ["job", *keys, *seeds, *judged, *COLUMNS]
    table = [
        [row["job"], *(row["overrides"].get(k, "") for k in keys), *(row.get(s) for s in seeds),
         *([row["metric"]] if several else []), row["value"], *(row[c] for c in COLUMNS)]
        for row in rows
    ]  # fmt: skip
    with open(root / "summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(table)
    modes = {m: next((job_mode(row) for row in rows if row["metric"] == m), mode) for m in metrics}
    ranking = (
        "the jobs optimize different metrics (" + ", ".join(f"{m} {modes[m]}" for m in metrics) + "): each "
        "ranked among the jobs of its metric, best first"
        if several
        else f"best {metric} ({mode}) first"
    )
    lines = [
        f"Sweep of {len(rows)} jobs in {root}; {ranking}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_cell(v) for v in line) + " |" for line in table),
    ]
    (root / "summary.md").write_text("\n".join(lines) + "\n")
    _plot(root / "summary.png", rows, keys, "best of each job's metric" if several else metric)
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 10 else f"{value:,.1f}"
    return "" if value is None else str(value)


def _short(value: str) -> str:
    """An override value for a label: floats to 4 significant digits."""
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() and "." not in value else f"{number:.4g}"


def _plot(path: Path, rows: list[dict[str, Any]], keys: list[str], name: str) -> Any:
    """The jobs' values (``row["value"]``, named ``name``) and their throughput, best first; the figure.

    Jobs of several metrics (``-m data=tabular,multitask``) share the value axis: each bar then
    says its metric, and the axis starts at zero, since no one scale zooms on losses and accuracies.
    """
    from matplotlib.figure import Figure

    one_metric = len({row.get("metric") for row in rows}) == 1

    labels = [", ".join(f"{k}={_short(str(row['overrides'].get(k, '')))}" for k in keys) or row["job"] for row in rows]
    figure = Figure(figsize=(11, max(3.0, 0.45 * len(rows) + 1.6)))
    left, right = figure.subplots(1, 2, sharey=True)
    for ax, key, title, color in (
        (left, "value", f"{name} (best first)", "tab:blue"),
        (right, "train_samples_per_s", "train samples/s", "tab:orange"),
    ):
        values = [float(row[key]) if isinstance(row.get(key), (int, float)) else math.nan for row in rows]
        values = [v if math.isfinite(v) else math.nan for v in values]  # a diverged loss (inf) has no bar
        ax.barh(range(len(rows)), [0.0 if math.isnan(v) else v for v in values], color=color)
        for y, v in enumerate(values):
            if not math.isnan(v):
                text = _cell(v) if key != "value" or one_metric else f"{_cell(v)} {rows[y].get('metric')}"
                ax.annotate(text, (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
        finite = [v for v in values if not math.isnan(v)]
        if key == "value" and finite and one_metric:  # zoom on the spread of the metric, with room for the labels
            low, high = min(finite), max(finite)
            pad = max((high - low) * 0.5, abs(high) * 0.01, 1e-6)
            ax.set_xlim(low - pad, high + pad * 1.5)
        elif finite:
            ax.set_xlim(min(0.0, *finite) * 1.2, max(0.0, *finite) * 1.3 or 1.0)
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
    left.set_yticks(range(len(rows)), labels, fontsize=8)
    left.invert_yaxis()  # best on top
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return figure


class SweepSummary(Callback):
    """Hydra callback: after a multirun, :func:`write_summary` into its sweep folder (see the module)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        root = Path(str(config.hydra.sweep.dir))
        metric = str(config.get("optimized_metric") or "val/acc")
        mode = str(config.get("optimized_mode") or "max")
        try:
            rows = write_summary(root, metric, mode)
        except Exception as err:  # a summary must never turn a finished sweep into a failure
            log.warning("Sweep summary not written: %s", err)
            return
        if rows:
            best = rows[0]
            shown = " ".join(f"{k}={best['overrides'][k]}" for k in varying(rows)) or best["job"]
            log.info(
                "Sweep summary: %s (first: %s %s: %s)", root / "summary.md", best["metric"], _cell(best["value"]), shown
            )
