"""``Throughput``: training samples per second, excluding validation."""

from __future__ import annotations

import time
from typing import Any

import lightning as L

from chute.collate import samples_in


class Throughput(L.Callback):
    """Count training samples and the wall time spent in training (validation excluded).

    Logs ``perf/train_samples_per_s`` each epoch; ``summary()`` gives totals for ``metrics.json``.
    The first epoch (worker start-up, caches cold) is reported separately from the rest.
    """

    def __init__(self) -> None:
        self.epoch_stats: list[tuple[int, float]] = []  # (samples, seconds) per epoch
        self._samples = 0
        self._seconds = 0.0
        self._t0: float | None = None

    def _resume(self) -> None:
        self._t0 = time.perf_counter()

    def _pause(self) -> None:
        if self._t0 is not None:
            self._seconds += time.perf_counter() - self._t0
            self._t0 = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._samples, self._seconds = 0, 0.0
        self._resume()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._t0 is None:  # an epoch resumed mid-way: Lightning does not call on_train_epoch_start
            self._resume()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._samples += samples_in(batch)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pause()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.training and self._samples:
            self._resume()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pause()
        if self._samples and self._seconds > 0:
            self.epoch_stats.append((self._samples, self._seconds))
            rate = self._samples / self._seconds
            pl_module.log("perf/train_samples_per_s", rate, on_step=False, on_epoch=True, sync_dist=True)

    def summary(self) -> dict[str, float]:
        """Totals over all epochs and over epochs after the first (steady state)."""
        out: dict[str, float] = {}
        if not self.epoch_stats:
            return out
        samples = sum(s for s, _ in self.epoch_stats)
        seconds = sum(t for _, t in self.epoch_stats)
        out["train_samples"] = float(samples)
        out["train_time_s"] = round(seconds, 3)
        out["train_samples_per_s"] = round(samples / seconds, 1)
        if len(self.epoch_stats) > 1:
            rest = self.epoch_stats[1:]
            out["train_samples_per_s_after_first_epoch"] = round(sum(s for s, _ in rest) / sum(t for _, t in rest), 1)
        return out
