"""``ClassHistogram``: what the model actually received in the first epoch, against the dataset."""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from chute.callbacks.preview import _close


class ClassHistogram(L.Callback):
    """Count the labels of every training batch in the first epoch and plot them next to the
    training split's class counts, as shares, so the effect of an imbalance strategy is visible.

    Writes ``class_histogram.png`` (in ``out_dir``, default the trainer's ``default_root_dir``) and
    a TensorBoard figure, and keeps the counts in ``received`` and ``dataset``. Counts are summed
    over ranks. Works with DataModules that have ``class_counts``; others are skipped.

    Args:
        out_dir: Where to write the PNG.
    """

    def __init__(self, out_dir: str | None = None) -> None:
        self.out_dir = out_dir
        self.received: np.ndarray | None = None
        self.dataset: np.ndarray | None = None
        self.path: str | None = None
        self._counts: torch.Tensor | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm: Any = trainer.datamodule  # type: ignore[attr-defined]
        if trainer.current_epoch != 0 or dm is None:
            return
        try:
            self.dataset = np.asarray(dm.class_counts)
        except (AttributeError, RuntimeError):  # no class targets (regression, streams)
            return
        # One bucket per class and one for labels outside them (-1 "ignore" labels, say), on the
        # batches' device (see on_train_batch_end).
        self._counts = torch.zeros(len(self.dataset) + 1, dtype=torch.int64, device=pl_module.device)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._counts is None:
            return
        targets = batch[1] if isinstance(batch, (tuple, list)) else batch.get("targets")
        if not isinstance(targets, torch.Tensor):
            return
        labels = targets.argmax(dim=1) if targets.is_floating_point() and targets.ndim == 2 else targets.long()
        labels = labels.flatten().to(self._counts.device)
        # Counted where the batch is, without reading anything back: on a GPU, copying the labels to
        # the host (or torch.bincount, which sizes its output from the data) waits for the device at
        # every step. The counts come to the host once, at the epoch's end.
        outside = len(self._counts) - 1
        labels = torch.where((labels >= 0) & (labels < outside), labels, outside)
        self._counts.index_add_(0, labels, torch.ones_like(labels))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._counts is None or self.dataset is None:
            return
        counts = self._counts[:-1]
        self._counts = None
        if trainer.world_size > 1:
            counts = trainer.strategy.reduce(counts.to(pl_module.device), reduce_op="sum")
        self.received = counts.cpu().numpy()
        if trainer.is_global_zero:
            self._plot(trainer)

    def _plot(self, trainer: L.Trainer) -> None:
        assert self.received is not None
        assert self.dataset is not None
        names = list(getattr(trainer.datamodule, "class_names", range(len(self.dataset))))  # type: ignore[attr-defined]
        figure = histogram_figure(self.dataset, self.received, [str(n) for n in names])
        out_dir = self.out_dir or trainer.default_root_dir
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(out_dir, "class_histogram.png")
        figure.savefig(self.path, dpi=100)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure("data/class_histogram", figure, global_step=0, close=False)
        _close(figure)


def histogram_figure(dataset: np.ndarray, received: np.ndarray, class_names: list[str]) -> Any:
    """Bars of each class's share in the training split and in what the model received."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(dataset))
    split, got = dataset / max(dataset.sum(), 1), received / max(received.sum(), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(x)), 3.8))
    ax.bar(x - 0.2, split, width=0.4, label=f"training split ({int(dataset.sum())} samples)")
    ax.bar(x + 0.2, got, width=0.4, label=f"what the model received in epoch 0 ({int(received.sum())})")
    ax.set_xticks(x, class_names, rotation=45 if len(x) > 12 else 0)
    ax.set_xlabel("class")
    ax.set_ylabel("share of samples")
    ax.set_title("Classes: the training split against the batches the model received")
    ax.set_ylim(0, max(float(split.max(initial=0)), float(got.max(initial=0)), 1e-9) * 1.1)
    # Below the axes, so it never covers a bar.
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
    fig.tight_layout()
    return fig
