"""scikit-learn's bundled handwritten digits, written out as a PNG image-folder tree.

The 1,797 8x8 images ship inside scikit-learn, so the default experiment needs no download.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from chute.datasets.folder_index import stratified_split
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
        imbalance_ratio: Make the training split long-tailed the way the long-tailed CIFAR
            benchmarks are built (Cui et al., CVPR 2019): class ``c`` keeps
            ``n_max * ratio ** (-c / (C - 1))`` of its training images, so digit 0 keeps all and
            digit 9 a ``1 / ratio`` share. The validation split stays balanced. 1 keeps every image.
        only_at: Write only when called with this location (the config's own default path); a
            DataModule pointed elsewhere reads the data found there and writes nothing
            (:meth:`~chute.datamodules.base.ChuteDataModule.run_prepare`). ``None``: write anywhere.

    Example:
        >>> import tempfile
        >>> root = DigitsFolder()(tempfile.mkdtemp() + "/digits")
        >>> sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
        ['train', 'val']
    """

    def __init__(
        self,
        val_fraction: float = 0.2,
        seed: int = 0,
        progress: bool = True,
        imbalance_ratio: float = 1.0,
        *,
        only_at: str | None = None,
    ) -> None:
        if not (isinstance(val_fraction, (int, float)) and 0.0 < val_fraction < 1.0):
            raise ValueError(f"val_fraction={val_fraction!r}: must be between 0 and 1 (exclusive)")
        if not (isinstance(imbalance_ratio, (int, float)) and imbalance_ratio >= 1.0):
            raise ValueError(f"imbalance_ratio={imbalance_ratio!r}: must be >= 1 (largest / smallest class)")
        self.val_fraction = val_fraction
        self.seed = seed
        self.progress = progress
        self.imbalance_ratio = float(imbalance_ratio)
        self.only_at = only_at

    def __repr__(self) -> str:
        extra = f", imbalance_ratio={self.imbalance_ratio}" if self.imbalance_ratio != 1 else ""
        return f"DigitsFolder(val_fraction={self.val_fraction}, seed={self.seed}{extra})"

    @property
    def manifest(self) -> dict[str, object]:
        manifest: dict[str, object] = {
            "source": "sklearn.datasets.load_digits", "val_fraction": self.val_fraction, "seed": self.seed,
        }  # fmt: skip
        if self.imbalance_ratio != 1:
            manifest["imbalance_ratio"] = self.imbalance_ratio
        return manifest

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
        if self.imbalance_ratio != 1:
            train_idx = long_tail(train_idx, targets, self.imbalance_ratio, self.seed)
        jobs = [("train", i) for i in train_idx] + [("val", i) for i in val_idx]
        for split in ("train", "val"):
            for label in range(10):
                (out / split / str(label)).mkdir(parents=True)
        for split, i in tqdm(jobs, desc="Writing digits PNGs", unit="img", disable=not self.progress, leave=False):
            Image.fromarray(images[i]).save(out / split / str(targets[i]) / f"{i:04d}.png")


def long_tail(indices: np.ndarray, targets: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """Keep ``n_max * ratio ** (-c / (C - 1))`` of class ``c``'s ``indices`` (a seeded choice)."""
    rng = np.random.default_rng(seed + 1)
    classes = np.unique(targets[indices])
    n_max = min(int((targets[indices] == c).sum()) for c in classes)
    kept = []
    for rank, c in enumerate(classes):
        members = indices[targets[indices] == c]
        n = max(1, round(n_max * ratio ** (-rank / max(len(classes) - 1, 1))))
        kept.append(np.sort(rng.choice(members, size=n, replace=False)))
    return np.sort(np.concatenate(kept))
