"""``DataPreview``: see what the model is fed, before the first step."""

from __future__ import annotations

import math
import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from chute.datamodules.base import ChuteDataModule


class DataPreview(L.Callback):
    """At the start of fitting, save a grid of augmented training images and of validation images.

    Each grid is a PNG (``preview_train.png``, ``preview_val.png``) in ``out_dir`` (default: the
    trainer's ``default_root_dir``), titled with class names, and a figure in TensorBoard when a
    TensorBoard logger is attached. Works with any DataModule that has ``preview_batch(split, n)``
    and ``class_names``; others are skipped.

    Args:
        num_images: Images per grid.
        out_dir: Where to write the PNGs.
    """

    def __init__(self, num_images: int = 32, out_dir: str | None = None) -> None:
        if num_images < 1:
            raise ValueError(f"num_images={num_images}: must be >= 1")
        self.num_images = num_images
        self.out_dir = out_dir
        self.paths: dict[str, str] = {}

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule  # type: ignore[attr-defined]
        if not isinstance(dm, ChuteDataModule):
            return
        out_dir = self.out_dir or trainer.default_root_dir
        os.makedirs(out_dir, exist_ok=True)
        for split in ("train", "val"):
            try:
                batch = dm.preview_batch(split, self.num_images)
            except Exception as err:  # a missing split must not stop training
                trainer.print(f"DataPreview: skipped '{split}': {err}")
                continue
            if batch is None:  # not images
                return
            images, labels = batch
            figure = preview_figure(images, labels, list(dm.class_names), title=f"{split} samples")
            path = os.path.join(out_dir, f"preview_{split}.png")
            figure.savefig(path, dpi=100)
            self.paths[split] = path
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_figure(f"data/{split}", figure, global_step=0, close=False)
            _close(figure)


def preview_figure(images: torch.Tensor, labels: torch.Tensor, class_names: list[str], title: str = "") -> Any:
    """A matplotlib figure of ``uint8`` ``(N, C, H, W)`` images, each titled with its class name."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(images)
    cols = min(8, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label in zip(axes.flat, images, labels, strict=False):
        array = image.permute(1, 2, 0).numpy()
        if array.shape[2] == 1:
            ax.imshow(array[:, :, 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(array, interpolation="nearest")
        ax.set_title(class_names[int(label)], fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _close(figure: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(figure)
