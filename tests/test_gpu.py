"""GPU checks (skipped without CUDA): 16-mixed training with pinned-memory loaders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.test_train import FAST, train

pytestmark = pytest.mark.gpu


def test_short_16_mixed_run_with_pinned_memory(tmp_path: Path, digits_root: Path) -> None:
    run_dir = tmp_path / "run"
    proc = train(*FAST, "loader.num_workers=2", f"hydra.run.dir={run_dir}", data_dir=digits_root.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["precision"] == "16-mixed"
    assert metrics["accelerator"] == "CUDAAccelerator"


def test_pinned_batches_normalize_on_the_gpu(digits_root: Path) -> None:
    from chute import LoaderSettings
    from chute.datamodules import ImageFolderDataModule
    from chute.transforms import create_transforms

    t = create_transforms(image_size=12, crop_pct=1.0, hflip=0.0)
    dm = ImageFolderDataModule(
        digits_root, image_mode="L", train_transform=t.train, val_transform=t.val,
        loader=LoaderSettings(batch_size=64, num_workers=2),
    )  # fmt: skip
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.is_pinned()
    assert images.dtype == torch.uint8
    ready, _ = dm.on_after_batch_transfer((images.cuda(non_blocking=True), labels.cuda()), 0)
    assert ready.is_cuda
    assert ready.dtype == torch.float32


def test_threaded_loader_delivers_on_the_device_through_reused_pinned_buffers() -> None:
    import numpy as np

    from chute.datasets import TabularDataset
    from chute.loader.threaded import ThreadedLoader
    from chute.samplers import BatchIndexSampler

    dataset = TabularDataset(np.arange(640, dtype=np.float32)[:, None], np.arange(640) % 3)
    sampler = BatchIndexSampler(640, 64, shuffle=False)
    loader = ThreadedLoader(dataset, sampler, threads=2, pin_memory=True, device="cuda")
    batches = list(loader)
    assert all(b[0].is_cuda and b[1].is_cuda for b in batches)
    assert torch.cat([b[0][:, 0] for b in batches]).cpu().tolist() == list(range(640))
    assert loader._copier is not None
    assert loader._copier.pool.allocated <= 2 * 2 * (2 + 1)  # (features, targets) x in-flight batches
    list(loader)  # a second epoch reuses the same staging buffers
    assert loader._copier.pool.allocated <= 2 * 2 * (2 + 1)
