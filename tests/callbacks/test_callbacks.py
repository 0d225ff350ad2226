from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.loggers import TensorBoardLogger

from chute import LoaderSettings
from chute.callbacks import DataPreview, Throughput
from chute.datamodules import ImageFolderDataModule
from chute.models import ImageClassifier
from chute.transforms import create_transforms


def _fit(digits_root: Path, tmp_path: Path, callbacks: list[L.Callback], epochs: int = 2) -> L.Trainer:
    t = create_transforms(image_size=12, crop_pct=1.0, hflip=0.0)
    dm = ImageFolderDataModule(
        digits_root, image_mode="L", train_transform=t.train, val_transform=t.val, loader=LoaderSettings(batch_size=16)
    )
    trainer = L.Trainer(
        max_epochs=epochs, limit_train_batches=3, limit_val_batches=1, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path, callbacks=callbacks,
        logger=TensorBoardLogger(tmp_path, name="tb", version=""), log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(ImageClassifier(num_classes=10, in_channels=1), datamodule=dm)
    return trainer


def test_preview_and_throughput(digits_root: Path, tmp_path: Path) -> None:
    preview, throughput = DataPreview(num_images=10), Throughput()
    trainer = _fit(digits_root, tmp_path, [preview, throughput])
    for split in ("train", "val"):
        assert Path(preview.paths[split]).is_file()
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events
    assert events[0].stat().st_size > 10_000

    stats = throughput.summary()
    assert stats["train_samples"] == 2 * 3 * 16
    assert stats["train_samples_per_s"] > 0
    assert "train_samples_per_s_after_first_epoch" in stats
    assert "perf/train_samples_per_s" in trainer.callback_metrics


def test_preview_needs_positive_count() -> None:
    with pytest.raises(ValueError, match="num_images=0"):
        DataPreview(num_images=0)


def test_learning_curves_keep_every_epochs_final_metrics_and_draw_them(tmp_path) -> None:
    import lightning as L
    import torch

    from chute.callbacks import LearningCurves

    class Model(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            loss = self.layer(batch[0]).pow(2).mean()
            self.log("train/loss", loss, on_epoch=True, on_step=False)
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val/acc", 0.5 + 0.1 * self.current_epoch)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 2)), batch_size=4)
    curves = LearningCurves(out_dir=str(tmp_path))
    trainer = L.Trainer(
        max_epochs=3, callbacks=[curves], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(Model(), data, data)
    assert [row["epoch"] for row in curves.history] == [0.0, 1.0, 2.0]
    assert [round(row["val/acc"], 2) for row in curves.history] == [0.5, 0.6, 0.7]  # each epoch's own
    assert all("train/loss" in row for row in curves.history)
    assert (tmp_path / "learning_curves.png").is_file()
