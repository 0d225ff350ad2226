"""Precomputed disk caches: built by prepare_data (once per node) and by scripts/build_cache.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chute.datamodules import ImageFolderDataModule
from chute.datasets.cache_store import MANIFEST
from chute.errors import ConfigError
from chute.transforms import create_transforms

ROOT = Path(__file__).resolve().parents[1]


def module(root: Path, cache_dir: Path, **kwargs: object) -> ImageFolderDataModule:
    t = create_transforms(image_size=8, crop_pct=1.0)
    return ImageFolderDataModule(
        root, image_mode="L", train_transform=t.train, val_transform=t.val, mean=[0.3], std=[0.3],
        cache_dir=str(cache_dir), train_batch_transform=t.train_batch, **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


def test_prepare_data_builds_the_disk_cache_and_later_runs_reuse_it(digits_root: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    first = module(digits_root, cache_dir, cache="disk", cache_size=10, device_augment=True)
    first.prepare_data()
    manifests = {split: cache_dir / split / MANIFEST for split in ("train", "val")}
    assert all(m.exists() for m in manifests.values())
    stamps = {split: m.stat().st_mtime_ns for split, m in manifests.items()}

    second = module(digits_root, cache_dir, cache="disk", cache_size=10, device_augment=True)
    second.setup("fit")
    images, _ = next(iter(second.train_dataloader()))
    assert images.shape[1:] == (1, 10, 10)  # cached squares; the crop runs in the device hook
    next(iter(second.val_dataloader()))
    assert {split: m.stat().st_mtime_ns for split, m in manifests.items()} == stamps  # reused, not rebuilt


def test_build_cache_needs_a_disk_cache(digits_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        module(digits_root, tmp_path).build_cache()
    assert info.value.key == "cache"


def test_build_cache_script(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_cache.py"), "data=digits", "data.cache=disk",
         "data.cache_size=10", f"data.cache_dir={tmp_path / 'cache'}", f"paths.data_dir={data_dir}"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train: " in proc.stdout
    assert "val: " in proc.stdout
    assert (tmp_path / "cache" / "train" / MANIFEST).exists()
