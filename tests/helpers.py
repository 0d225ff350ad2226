"""Helpers shared by tests (importable, unlike conftest)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn


def write_image(path: Path, size: tuple[int, int] = (40, 30), seed: int = 0, mode: str = "RGB") -> Path:
    """A small real image file (format from the suffix) with random content."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).convert(mode).save(path)
    return path


def assert_mentions(message: str, *parts: str) -> None:
    """Assert that an error message names every one of ``parts`` (file, row, column, key, value...)."""
    missing = [p for p in parts if p not in message]
    assert not missing, f"{missing} not in message: {message}"


class RecordRows(L.LightningModule):
    """A linear model on the 30-feature breast-cancer table that records the first feature of every
    training row (unique per row), to compare the rows two runs trained on."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(30, 2)
        self.seen: list[list[float]] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.seen.append(batch[0][:, 0].tolist())
        return nn.functional.cross_entropy(self.layer(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)
