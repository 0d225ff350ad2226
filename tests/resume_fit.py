"""A fit that is killed mid-epoch and resumed from its mid-epoch checkpoint, run by tests/test_resume.py.

    python tests/resume_fit.py OUT_DIR KIND WORKERS MODE

KIND: ``image`` (an image folder of constant images whose pixel value is the sample id),
``table`` (a CSV whose feature is the row id) or ``stream`` (that table copied into JSONL shards and
streamed by StreamingDataModule). MODE: ``full`` trains 2 epochs; ``killed`` trains
the same run, checkpointing every 3 steps, and SIGKILLs itself after step 17 (epoch 1, batch 5;
the last checkpoint is step 15); ``resume`` resumes from the step-15 checkpoint. Every training
step appends the ids of its batch to OUT_DIR/ids-<MODE>.jsonl (flushed and synced, so a killed
run leaves what it saw).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from PIL import Image
from torch import nn

from chute.datamodules import ImageFolderDataModule, StreamingDataModule, TabularDataModule
from chute.datasets import ShardedCopy
from chute.transforms import create_transforms

SAMPLES = 48  # 12 batches of 4 per epoch
KILL_AFTER_STEP = 17


class RecordIds(L.LightningModule):
    def __init__(self, kind: str, log_path: str) -> None:
        super().__init__()
        self.kind, self.log_path = kind, log_path
        self.layer = nn.Linear(1, 1)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        inputs = batch[0]
        if self.kind in ("table", "stream"):
            ids = inputs[:, 0].round().long()
        else:  # mean 0, std 1: the model sees pixel / 255
            ids = (inputs.reshape(len(inputs), -1)[:, 0] * 255).round().long()
        with open(self.log_path, "a") as f:
            f.write(json.dumps({"epoch": self.current_epoch, "ids": ids.tolist()}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return self.layer.weight.sum() * 0.0

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


class KillAt(Callback):
    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == KILL_AFTER_STEP:
            os.kill(os.getpid(), signal.SIGKILL)  # no clean-up, no final checkpoint


def datamodule(out: Path, kind: str, workers: int) -> L.LightningDataModule:
    loader = {"batch_size": 4, "num_workers": workers}
    if kind in ("table", "stream"):
        table = out / "table.csv"
        table.write_text("id,label\n" + "".join(f"{i},c{i % 3}\n" for i in range(SAMPLES)))
        source = TabularDataModule(
            str(table), target="label", numeric=["id"], standardize=False, val_path=str(table), loader=loader, seed=5
        )
        if kind == "table":
            return source
        return StreamingDataModule(out / "shards", prepare=ShardedCopy(source, 10), loader=loader, seed=5)
    root = out / "images"
    for i in range(SAMPLES):
        folder = root / "train" / f"c{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((6, 6), i, dtype=np.uint8), mode="L").save(folder / f"{i:03d}.png")
    t = create_transforms(image_size=4, crop_pct=1.0)
    return ImageFolderDataModule(
        root, image_mode="L", train_transform=t.train, val_transform=t.val, mean=[0.0], std=[1.0],
        val_fraction=0.2, channels_last=False, loader=loader, seed=5,
    )  # fmt: skip


def main() -> None:
    out, kind, workers, mode = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = ModelCheckpoint(
        dirpath=str(out / "ckpt"), filename="{step}", every_n_train_steps=3, save_top_k=-1, save_last=False
    )
    callbacks: list[Callback] = [checkpoints] + ([KillAt()] if mode == "killed" else [])
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=2, limit_val_batches=0, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks, default_root_dir=str(out),
    )  # fmt: skip
    model = RecordIds(kind, str(out / f"ids-{mode}.jsonl"))
    resume = str(out / "ckpt" / "step=15.ckpt") if mode == "resume" else None
    trainer.fit(model, datamodule=datamodule(out, kind, workers), ckpt_path=resume)


if __name__ == "__main__":
    main()
