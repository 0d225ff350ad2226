"""A folder of realistic JPEG photographs, made offline from scikit-image's bundled sample images.

The decode benchmarks need ImageNet-like files: photographs 400-640 px wide, JPEG quality 90. The
sample photos that ship inside scikit-image (astronaut, coffee, rocket, a cat, a motorcycle, ...)
are cut into random crops, rescaled and re-encoded; each source photo is a class.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from chute.datasets.materialize import materialize

# Bundled with scikit-image (no download); grayscale ones are converted to RGB.
SOURCES = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
    "retina", "stereo_motorcycle", "camera", "moon", "brick", "gravel",
)  # fmt: skip


def _source(name: str) -> np.ndarray:
    from skimage import data

    image: Any = getattr(data, name)()
    image = image[0] if isinstance(image, tuple) else image  # stereo_motorcycle: (left, right, disparity)
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.dtype != np.uint8:
        image = (255 * (image.astype(np.float64) / max(float(image.max()), 1e-9))).astype(np.uint8)
    return np.ascontiguousarray(image[..., :3])


class PhotoFolder:
    """Writes ``root/{train,val}/<source>/<n>.jpg``: random crops of scikit-image's sample photos.

    Each image is a crop covering 30-100% of a source photo's area (aspect 3:4 to 4:3), rescaled to
    a width drawn from ``width`` and saved as JPEG at ``quality``. Written once (atomically);
    calling again with the same settings reuses the folder.

    Args:
        num_images: Images in total (train + val).
        val_fraction: Share of each class written to ``val``.
        width: Range of image widths in pixels.
        quality: JPEG quality.
        seed: Seed of the crops (each image's own: ``(seed, n)``, so any number of writers write the same files).
        workers: Processes writing (the files do not depend on it).

    Example:
        >>> import tempfile
        >>> root = PhotoFolder(num_images=24, width=(64, 96))(tempfile.mkdtemp() + "/photos")
        >>> len(list(root.glob("*/*/*.jpg")))
        24
    """

    def __init__(
        self,
        num_images: int = 2000,
        val_fraction: float = 0.1,
        width: tuple[int, int] | list[int] = (400, 640),
        quality: int = 90,
        seed: int = 0,
        workers: int = 1,
    ) -> None:
        if num_images < 2 * len(SOURCES) and num_images < 2:
            raise ValueError(f"num_images={num_images}: need at least 2")
        self.num_images, self.val_fraction, self.quality, self.seed = num_images, val_fraction, quality, seed
        self.width = (int(width[0]), int(width[1]))
        self.workers = max(1, int(workers))

    @property
    def manifest(self) -> dict[str, object]:
        return {
            "source": "skimage.data sample photos", "num_images": self.num_images, "val_fraction": self.val_fraction,
            "width": list(self.width), "quality": self.quality, "seed": self.seed, "classes": list(SOURCES),
            "draws": "per image",
        }  # fmt: skip

    def __call__(self, root: str | os.PathLike[str]) -> Path:
        return materialize(root, self.manifest, self._write)

    def _write(self, out: Path) -> None:
        chunks = [range(start, self.num_images, self.workers) for start in range(self.workers)]
        if self.workers == 1:
            self._write_some(out, chunks[0], progress=True)
            return
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(self.workers) as pool:
            for done in [pool.submit(self._write_some, out, chunk) for chunk in chunks]:
                done.result()

    def _write_some(self, out: Path, numbers: range, progress: bool = False) -> None:
        from PIL import Image

        sources = [_source(name) for name in SOURCES]
        for i in tqdm(numbers, desc="Writing photos", unit="img", leave=False, disable=not progress):
            rng = np.random.default_rng([self.seed, i])
            label = i % len(SOURCES)
            split = "val" if (i // len(SOURCES)) % round(1 / max(self.val_fraction, 1e-9)) == 0 else "train"
            crop = _random_crop(sources[label], rng)
            width = int(rng.integers(self.width[0], self.width[1] + 1))
            height = max(1, round(crop.shape[0] * width / crop.shape[1]))
            folder = out / split / SOURCES[label]
            folder.mkdir(parents=True, exist_ok=True)  # several writers may make it at once
            Image.fromarray(crop).resize((width, height), Image.Resampling.BICUBIC).save(
                folder / f"{i:05d}.jpg", quality=self.quality
            )


def _random_crop(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    area = h * w * rng.uniform(0.3, 1.0)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = int(min(w, round(np.sqrt(area * aspect))))
    ch = int(min(h, round(np.sqrt(area / aspect))))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return np.ascontiguousarray(image[y : y + ch, x : x + cw])
