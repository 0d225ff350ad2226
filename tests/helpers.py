"""Helpers shared by tests (importable, unlike conftest)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


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
