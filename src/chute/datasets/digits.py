"""scikit-learn's bundled handwritten digits, written out as a PNG image-folder tree.

The 1,797 8x8 images ship inside scikit-learn, so the default experiment needs no download.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from chute.datasets.folder import stratified_split
from chute.datasets.materialize import materialize


class DigitsFolder:
    """Writes ``root/{train,val}/<digit>/<n>.png`` from scikit-learn's digits, once.

    Calling it again with the same settings reuses the tree; different settings rewrite it.
    The tree is built in a temporary sibling folder and renamed into place, so a crashed or
    concurrent writer (one per DDP rank) never leaves a half-written dataset behind.

    Args:
        val_fraction: Share of each class held out for validation (stratified, seeded).
        seed: Seed of the split.
        progress: Show a progress bar while writing.

    Example:
        >>> import tempfile
        >>> root = DigitsFolder()(tempfile.mkdtemp() + "/digits")
        >>> sorted(p.name for p in root.iterdir())
        ['train', 'val']
    """

    def __init__(self, val_fraction: float = 0.2, seed: int = 0, progress: bool = True) -> None:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction={val_fraction}: must be between 0 and 1 (exclusive)")
        self.val_fraction = val_fraction
        self.seed = seed
        self.progress = progress

    def __repr__(self) -> str:
        return f"DigitsFolder(val_fraction={self.val_fraction}, seed={self.seed})"

    @property
    def manifest(self) -> dict[str, object]:
        return {"source": "sklearn.datasets.load_digits", "val_fraction": self.val_fraction, "seed": self.seed}

    def __call__(self, root: str | os.PathLike[str]) -> Path:
        return materialize(root, self.manifest, self._write)

    def _write(self, out: Path) -> None:
        from PIL import Image
        from sklearn.datasets import load_digits

        digits = load_digits()
        # 0..16 intensities -> 0..255, the same rounding for every pixel.
        images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
        targets = digits.target.astype(np.int64)
        train_idx, val_idx = stratified_split(targets, self.val_fraction, self.seed)
        jobs = [("train", i) for i in train_idx] + [("val", i) for i in val_idx]
        for split in ("train", "val"):
            for label in range(10):
                (out / split / str(label)).mkdir(parents=True)
        for split, i in tqdm(jobs, desc="Writing digits PNGs", unit="img", disable=not self.progress, leave=False):
            Image.fromarray(images[i]).save(out / split / str(targets[i]) / f"{i:04d}.png")
