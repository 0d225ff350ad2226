"""A fit that is killed mid-epoch and resumed from its mid-epoch checkpoint, run by tests/test_resume.py.

    python tests/resume_fit.py OUT_DIR KIND SETTING MODE

KIND is a kind of data of the contract suite (tests/contract_kinds.py), SETTING a loader setting
(tests/contract_run.py: w0, w2, t2). MODE: ``full`` trains 2 epochs; ``killed`` trains the same run,
checkpointing every step, and SIGKILLs itself after the second step of epoch 1; ``resume`` resumes
from the checkpoint after the first step of epoch 1. Every training step appends the ids of its
batch to OUT_DIR/ids-<MODE>.jsonl (flushed and synced, so a killed run leaves what it saw). The model
asks for ``trainer.estimated_stepping_batches`` in ``configure_optimizers``, as chute's models do
(Lightning then restores no loader state itself: its issue #20550).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

from tests.contract_kinds import BATCH, EVAL_BATCH, KINDS
from tests.contract_run import SETTINGS


def steps_per_epoch(kind: str) -> int:
    return math.ceil(KINDS[kind].train_samples / BATCH)


class RecordIds(L.LightningModule):
    def __init__(self, ids: Callable[[Any], torch.Tensor], log_path: str) -> None:
        super().__init__()
        self.read_ids, self.log_path = ids, log_path
        self.layer = nn.Linear(1, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        with open(self.log_path, "a") as f:
            f.write(json.dumps({"epoch": self.current_epoch, "ids": self.read_ids(batch).tolist()}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return self.layer.weight.sum() * 0.0

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.0)
        total = self.trainer.estimated_stepping_batches  # as chute's schedules do
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / (total + 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class KillAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)  # no clean-up, no final checkpoint


def main() -> None:
    out, kind, setting, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    out.mkdir(parents=True, exist_ok=True)
    resume_step = steps_per_epoch(kind) + 1  # epoch 1, after its first batch
    checkpoints = ModelCheckpoint(
        dirpath=str(out / "ckpt"), filename="{step}", every_n_train_steps=1, save_top_k=-1, save_last=False
    )
    callbacks: list[Callback] = [checkpoints] + ([KillAt(resume_step + 1)] if mode == "killed" else [])
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=2, limit_val_batches=0, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks, default_root_dir=str(out),
    )  # fmt: skip
    spec = KINDS[kind]
    model = RecordIds(spec.ids, str(out / f"ids-{mode}.jsonl"))
    dm = spec.make(out / kind, {"batch_size": BATCH, "eval_batch_size": EVAL_BATCH, **SETTINGS[setting]})
    resume = str(out / "ckpt" / f"step={resume_step}.ckpt") if mode == "resume" else None
    trainer.fit(model, datamodule=dm, ckpt_path=resume)


if __name__ == "__main__":
    main()
