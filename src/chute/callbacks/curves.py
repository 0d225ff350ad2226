"""``LearningCurves``: loss, the watched metric, throughput and data wait per epoch, as one PNG."""

from __future__ import annotations

import math
import os
from typing import Any

import lightning as L

#: Panels: title, y label, the logged keys drawn in it (those a run logs; others are skipped).
PANELS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Loss", "loss", ("train/loss", "val/loss")),
    ("Validation metrics", "value", ("val/acc", "val/bal_acc", "val/macro_f1", "val/rmse", "val/mae")),
    ("Training throughput", "samples/s", ("perf/step_samples_per_s", "perf/train_samples_per_s")),
    ("Waiting for data", "share of step time", ("perf/data_wait_fraction", "perf/loader_wait_fraction")),
)


class LearningCurves(L.Callback):
    """Keep each epoch's logged metrics and draw ``learning_curves.png`` when training ends.

    A snapshot of ``trainer.callback_metrics`` is taken when the next epoch starts (and when
    training ends), so every metric of the epoch, validation and epoch-level aggregates included,
    is final. Keys a run does not log are left out; ``history`` keeps the numbers.

    Args:
        out_dir: Where to write the PNG (default: the trainer's ``default_root_dir``).
    """

    def __init__(self, out_dir: str | None = None) -> None:
        self.out_dir = out_dir
        self.history: list[dict[str, float]] = []
        self.path: str | None = None
        self._epoch: int | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._snapshot(trainer)
        self._epoch = trainer.current_epoch

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._snapshot(trainer)
        if trainer.is_global_zero and self.history:
            out_dir = self.out_dir or trainer.default_root_dir
            os.makedirs(out_dir, exist_ok=True)
            self.path = os.path.join(out_dir, "learning_curves.png")
            figure = curves_figure(self.history)
            figure.savefig(self.path, dpi=100)

    def _snapshot(self, trainer: L.Trainer) -> None:
        if self._epoch is None:
            return
        row = {"epoch": float(self._epoch)}
        for key, value in trainer.callback_metrics.items():
            try:
                number = float(value)
            except (TypeError, ValueError, RuntimeError):
                continue
            if math.isfinite(number):
                row[key] = number
        self.history.append(row)
        self._epoch = None


def curves_figure(history: list[dict[str, float]]) -> Any:
    """A 2 x 2 figure of :data:`PANELS` over epochs (one line per logged key)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 6.5))
    axes = figure.subplots(2, 2)
    epochs = [row["epoch"] for row in history]
    for ax, (title, ylabel, keys) in zip(axes.flat, PANELS, strict=True):
        drawn = False
        for key in keys:
            points = [(e, row[key]) for e, row in zip(epochs, history, strict=True) if key in row]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=key)
                drawn = True
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        if drawn:
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
            if ylabel != "loss" and ylabel != "value":
                ax.set_ylim(bottom=0)  # rates and shares from zero, so small wobbles look small
        else:
            ax.text(0.5, 0.5, "not logged in this run", ha="center", va="center", transform=ax.transAxes)
    figure.tight_layout()
    return figure
