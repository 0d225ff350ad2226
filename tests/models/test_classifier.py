from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from chute import LoaderSettings
from chute.datamodules import ImageFolderDataModule
from chute.models import BACKBONES, ImageClassifier, create_backbone
from chute.transforms import create_transforms


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("channels", [1, 3])
def test_backbones_map_images_to_logits(name: str, channels: int) -> None:
    net = create_backbone(name, in_channels=channels, num_classes=7)
    assert net(torch.zeros(2, channels, 12, 12)).shape == (2, 7)


def test_unknown_backbone_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"backbone='vit'.*resnet18.*small_cnn"):
        create_backbone("vit", 3, 2)


def test_soft_targets_are_accepted() -> None:
    model = ImageClassifier(num_classes=3, in_channels=1)
    logits = torch.randn(4, 3)
    hard = torch.tensor([0, 1, 2, 0])
    soft = torch.nn.functional.one_hot(hard, 3).float()
    torch.testing.assert_close(model._loss(logits, soft), model._loss(logits, hard))


def test_checkpoint_reloads_with_weights_only(digits_root: Path, tmp_path: Path) -> None:
    """Hyperparameters and DataModule state are plain values: checkpoints load without unpickling code."""
    t = create_transforms(image_size=12, crop_pct=1.0, hflip=0.0)
    dm = ImageFolderDataModule(
        digits_root, image_mode="L", train_transform=t.train, val_transform=t.val, loader=LoaderSettings(batch_size=32)
    )
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False, enable_progress_bar=False,
        default_root_dir=tmp_path, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(ImageClassifier(num_classes=10, in_channels=1), datamodule=dm)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["hyper_parameters"]["num_classes"] == 10
    assert ckpt["ImageFolderDataModule"]["class_names"] == [str(i) for i in range(10)]
    restored = ImageClassifier.load_from_checkpoint(path, weights_only=True)
    assert restored.hparams["in_channels"] == 1
    fresh = ImageFolderDataModule(digits_root, image_mode="L")
    fresh.load_state_dict(ckpt["ImageFolderDataModule"])
    assert fresh.mean == dm.mean
