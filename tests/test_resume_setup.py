"""Resuming through a Trainer redoes what ``setup`` made from this run's settings when the checkpoint's
differ: Lightning calls ``setup`` before it restores the DataModule's state, so a split held out with a
freshly drawn seed (``seed=None``) or a vocabulary built from files changed since must be made again
from the checkpoint's seed and vocabulary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from chute.datamodules import ImageFolderDataModule, SequenceDataModule
from chute.transforms import create_transforms
from tests.helpers import write_image

pytestmark = pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")


class AnyBatch(L.LightningModule):
    """Trains one parameter on any batch (the test is about what the DataModule hands out)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return (self.weight - 1.0).pow(2).sum()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(dm: L.LightningDataModule, root: Path, max_steps: int, ckpt: str | None = None) -> None:
    """Fit to ``max_steps``, checkpointing every 2 steps into ``root``; from ``ckpt`` when given."""
    trainer = L.Trainer(
        max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, default_root_dir=root,
        callbacks=[ModelCheckpoint(dirpath=root, every_n_train_steps=2, save_top_k=-1)],
    )  # fmt: skip
    trainer.fit(AnyBatch(), datamodule=dm, ckpt_path=ckpt)


def test_a_resumed_image_folder_run_with_a_null_seed_keeps_the_checkpoints_split(tmp_path: Path) -> None:
    for label in ("a", "b"):
        for i in range(20):
            write_image(tmp_path / "tree" / label / f"{i}.png", size=(12, 12), seed=i + 20 * (label == "b"))

    def make() -> ImageFolderDataModule:
        return ImageFolderDataModule(tmp_path / "tree", val_fraction=0.25, seed=None, loader={"batch_size": 4},
                                     transforms=create_transforms(image_size=8, crop_pct=1.0))  # fmt: skip

    first = make()
    fit(first, tmp_path / "run", max_steps=2)
    resumed = make()
    fit(resumed, tmp_path / "run", max_steps=4, ckpt=str(tmp_path / "run" / "epoch=0-step=2.ckpt"))
    assert resumed.seed == first.seed
    for split in ("train", "val"):
        assert sorted(resumed._split(split).paths.tolist()) == sorted(first._split(split).paths.tolist())


def test_a_resumed_sequence_run_keeps_the_checkpoints_split_and_vocabulary(tmp_path: Path) -> None:
    """A null seed and no val file: the held-out lines; a line with a new character added since: the ids."""
    lines = [{"text": "abcdefg"[i % 7 :] + "xyz"[: i % 3 + 1], "label": i % 2} for i in range(60)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    ckpt = str(tmp_path / "run" / "epoch=0-step=2.ckpt")

    def make() -> SequenceDataModule:
        return SequenceDataModule(tmp_path, seed=None, val_fraction=0.2, loader={"batch_size": 4})

    first = make()
    fit(first, tmp_path / "run", max_steps=2)
    resumed = make()
    fit(resumed, tmp_path / "run", max_steps=4, ckpt=ckpt)
    assert resumed.seed == first.seed
    val, first_val = resumed.dataset("val").packed, first.dataset("val").packed
    assert val.flat.tolist() == first_val.flat.tolist()  # the same held-out lines
    assert val.offsets.tolist() == first_val.offsets.tolist()

    with (tmp_path / "train.jsonl").open("a") as file:
        file.write(json.dumps({"text": "!a", "label": 0}) + "\n")  # '!' sorts first: every id would shift
    changed = make()
    fit(changed, tmp_path / "run", max_steps=4, ckpt=ckpt)
    assert first.vocab is not None
    assert changed.vocab is not None
    assert changed.vocab.chars == first.vocab.chars
    assert changed.model_kwargs == first.model_kwargs
