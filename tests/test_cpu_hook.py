"""On a CPU trainer the batch hook runs in the loader (issue 14), the same batches whatever loads them.

And the pieces that keep a default run fast: per-sample seeding without ``torch.manual_seed``, and
``StallMonitor`` counting only the wait for data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torchvision.transforms import v2

from chute.callbacks import StallMonitor
from chute.datamodules import ImageFolderDataModule
from chute.loader import seeded_call
from chute.transforms import create_transforms

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def test_seeded_call_draws_as_manual_seed_did_and_restores_the_generator() -> None:
    transform = v2.Compose([v2.RandomRotation(20), v2.RandomResizedCrop(16), v2.ColorJitter(0.3, 0.3)])
    image = torch.randint(0, 256, (3, 24, 24), dtype=torch.uint8)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    got = seeded_call(transform, image, key=1234)
    assert torch.equal(torch.get_rng_state(), before)  # the model's randomness is untouched
    torch.manual_seed(1234)
    assert torch.equal(got, transform(image))  # the draws a full torch.manual_seed gave


class Recorder(L.LightningModule):
    """Keeps every training and validation batch it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 2)
        self.train_batches: list[torch.Tensor] = []
        self.val_batches: list[torch.Tensor] = []
        self.hooked: dict[bool, tuple[bool, bool]] = {}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.train_batches.append(batch[0].clone())
        return self.layer(batch[0].float().mean(dim=(2, 3))).sum()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.val_batches.append(batch[0].clone())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(root: Path, loader: dict[str, Any], cache: bool, accelerator: str = "cpu") -> Recorder:
    t = create_transforms(image_size=16, crop_pct=1.0)
    extra: dict[str, Any] = {"cache": "memory", "cache_size": 20, "device_augment": True} if cache else {}
    dm = ImageFolderDataModule(
        root, train_transform=t.train, val_transform=t.val, train_batch_transform=t.train_batch, mean=MEAN, std=STD,
        seed=3, loader={"batch_size": 8, **loader}, **extra,
    )  # fmt: skip
    model = Recorder()
    trainer = L.Trainer(
        accelerator=accelerator, max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    model.hooked = dict(dm._in_loader)  # which of the hook's steps ran in the loader, per split
    return model


LOADERS = {
    "w0": {"num_workers": 0},
    "w2": {"num_workers": 2, "persistent_workers": True},
    "t2": {"num_workers": 2, "backend": "threads"},
}


@pytest.mark.parametrize("cache", [True, False], ids=["cache-batch-crop", "crop-aware"])
def test_the_model_gets_the_same_normalized_batches_from_any_loader(make_tree: Any, cache: bool) -> None:
    root = make_tree(ext="jpg", counts={"a": 9, "b": 8}, size=(40, 32))
    runs = {name: _fit(root, settings, cache) for name, settings in LOADERS.items()}
    for model in runs.values():
        assert model.hooked == {True: (True, cache), False: (True, False)}  # the hook ran in the loader
    reference = runs["w0"]
    for name, model in runs.items():
        for mine, theirs in zip(model.train_batches, reference.train_batches, strict=True):
            assert torch.equal(mine, theirs), name
        for mine, theirs in zip(model.val_batches, reference.val_batches, strict=True):
            assert torch.equal(mine, theirs), name
    for images in reference.train_batches + reference.val_batches:
        assert images.dtype == torch.float32
        assert images.shape[1:] == (3, 16, 16)
        assert images.min() >= -2.0 - 1e-5  # normalized once: (0 - 0.5) / 0.25, not twice
        assert images.max() <= 2.0 + 1e-5
    epochs = reference.train_batches
    assert not torch.equal(epochs[0], epochs[len(epochs) // 2])  # each epoch draws anew


def test_stall_monitor_runs_last_and_times_only_the_wait(make_tree: Any) -> None:
    root = make_tree(ext="jpg", counts={"a": 9, "b": 8}, size=(40, 32))
    t = create_transforms(image_size=16, crop_pct=1.0)
    dm = ImageFolderDataModule(
        root, train_transform=t.train, val_transform=t.val, mean=MEAN, std=STD, loader={"batch_size": 4}
    )
    monitor = StallMonitor(warmup_steps=0)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, callbacks=[monitor],
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(Recorder(), datamodule=dm)  # with the progress bar on
    assert trainer.callbacks[-1] is monitor  # type: ignore[attr-defined]
    summary = monitor.summary()
    assert 0.0 < summary["data_wait_fraction"] < 1.0
