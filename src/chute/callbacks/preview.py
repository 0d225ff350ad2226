"""``DataPreview``: see what the model is fed, before the first step."""

from __future__ import annotations

import math
import os
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image

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
            figure.canvas.draw()  # drawn once: the PNG and TensorBoard get the same pixels
            pixels = np.array(figure.canvas.buffer_rgba())[:, :, :3]  # the figure is not pyplot's: no close
            path = os.path.join(out_dir, f"preview_{split}.png")
            Image.fromarray(pixels).save(path)
            self.paths[split] = path
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_image(f"data/{split}", pixels, global_step=0, dataformats="HWC")


def preview_figure(images: torch.Tensor, labels: torch.Tensor, class_names: list[str], title: str = "") -> Any:
    """A matplotlib figure of ``uint8`` ``(N, C, H, W)`` images, each titled with its class name, or of
    clips ``(N, T, C, H, W)``: a row per clip, its frames in order, the class under the first.

    The images are tiled into one picture on one axes, with the names as text under the tiles: a
    figure of 32 axes and a tight layout took ~2.5 s to draw on the 2-core machine, this ~0.3 s.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names: list[str] = [class_names[int(label)] for label in labels[: len(images)]]
    if images.ndim == 5:  # clips (N, T, C, H, W): one row per clip, its frames left to right
        frames = images.shape[1]
        names = [name if t == 0 else f"t{t}" for name in names for t in range(frames)]
        images = images.flatten(0, 1)
        cols = frames
    else:
        cols = min(8, len(images))
    n = len(images)
    rows = math.ceil(n / cols)
    channels, height, width = images.shape[1:]
    pad = max(1, max(height, width) // 16)
    gap = max(height // 4, 4)  # room for the class name under each tile
    cell_h, cell_w = height + gap + pad, width + pad
    canvas = np.full((rows * cell_h, cols * cell_w, channels), 255, dtype=np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, cols)
        canvas[r * cell_h : r * cell_h + height, c * cell_w : c * cell_w + width] = image.permute(1, 2, 0).numpy()
    fig = Figure(figsize=(1.6 * cols, 1.8 * rows + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 0.94 if title else 1.0))
    ax.axis("off")
    if channels == 1:
        ax.imshow(canvas[:, :, 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest", aspect="auto")
    else:
        ax.imshow(canvas, interpolation="nearest", aspect="auto")
    for k, name in enumerate(names):
        r, c = divmod(k, cols)
        ax.text(c * cell_w + width / 2, r * cell_h + height + gap / 2, name, ha="center", va="center", fontsize=9)
    if title:
        fig.suptitle(title)
    return fig


def _close(figure: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(figure)
