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


def test_loader_threads_hand_a_gpu_trainer_finished_batches_with_a_cpu_trainers_crops(make_tree) -> None:
    """With loader threads on a GPU, normalization and the random crop run in the loader thread, on
    the device, right after the side-stream copy: the training thread gets float batches on the GPU,
    cropped as a CPU trainer's are (the same per-batch draws; the CPU crops uint8 with OpenCV, so
    pixels agree to within rounding, and differ wholesale under other draws, ~0.95 here)."""
    from tests.test_cpu_hook import _fit

    root = make_tree(ext="jpg", counts={"a": 9, "b": 8}, size=(40, 32))
    threads = {"num_workers": 2, "backend": "threads"}
    gpu, cpu = _fit(root, threads, cache=True, accelerator="gpu"), _fit(root, threads, cache=True)
    assert gpu.hooked == {True: (True, True), False: (True, False)}
    assert all(b.is_cuda and b.dtype == torch.float32 for b in gpu.train_batches + gpu.val_batches)
    for mine, theirs in zip(gpu.train_batches, cpu.train_batches, strict=True):
        assert (mine.cpu() - theirs).abs().mean() < 0.2
    for mine, theirs in zip(gpu.val_batches, cpu.val_batches, strict=True):
        torch.testing.assert_close(mine.cpu(), theirs, atol=1e-5, rtol=0)


def test_worker_processes_leave_the_hook_to_the_gpu_trainer(make_tree) -> None:
    from tests.test_cpu_hook import _fit

    root = make_tree(ext="jpg", counts={"a": 9, "b": 8}, size=(40, 32))
    gpu = _fit(root, {"num_workers": 2}, cache=True, accelerator="gpu")
    assert gpu.hooked == {True: (False, False), False: (False, False)}
    assert all(b.is_cuda and b.dtype == torch.float32 for b in gpu.train_batches + gpu.val_batches)
