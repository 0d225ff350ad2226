"""A fit that is killed mid-epoch and resumed from its mid-epoch checkpoint, run by tests/test_resume.py
(one process) and tests/test_multinode.py (every rank of two simulated nodes).

    python tests/resume_fit.py OUT_DIR KIND[,KIND...] SETTING MODE [BATCH]

KIND is a kind of data of the contract suite (tests/contract_kinds.py), SETTING a loader setting
(tests/contract_run.py: w0, w2, t2). MODE: ``full`` trains 2 epochs; ``killed`` trains the same run,
checkpointing every step, and stops after the second step of epoch 1: one process SIGKILLs itself,
each rank of a distributed run (torchrun's environment) writes OUT_DIR/held-rank<r> with its pid and
waits there for the test to kill every process of every node; ``resume`` resumes from the checkpoint
after the first step of epoch 1 (``killed`` wrote its step to OUT_DIR/resume-step). Every training step
appends the ids of its batch to OUT_DIR/ids-<MODE>[-rank<r>].jsonl (flushed and synced, so a killed run
leaves what it saw). ``full`` and ``resume`` take several kinds, one after another, each in
OUT_DIR/KIND; one kind runs in OUT_DIR itself. The model asks for ``trainer.estimated_stepping_batches``
in ``configure_optimizers``, as chute's models do (Lightning then restores no loader state itself:
its issue #20550).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
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
        return sum(p.sum() for p in self.parameters()) * 0.0  # every parameter: DDP syncs them all

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.0)
        total = self.trainer.estimated_stepping_batches  # as chute's schedules do
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / (total + 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class StopAt(Callback):
    """Stop after the second step of epoch 1: SIGKILL one process; hold every rank of a distributed run
    until the test kills them all (a rank killing itself could break another's collective first)."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.is_global_zero:
            (self.out / "resume-step").write_text(str(trainer.num_training_batches + 1))

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step != trainer.num_training_batches + 2:
            return
        if trainer.world_size == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # no clean-up, no final checkpoint
        (self.out / f"held-rank{trainer.global_rank}").write_text(str(os.getpid()))
        time.sleep(3600)


def fit(out: Path, kind: str, setting: str, mode: str, batch: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    world = int(os.environ.get("WORLD_SIZE", 1))
    nodes = int(os.environ.get("GROUP_WORLD_SIZE", 1))  # torchrun --nnodes: several (simulated) nodes
    rank = f"-rank{os.environ['RANK']}" if world > 1 else ""
    checkpoints = ModelCheckpoint(
        dirpath=str(out / "ckpt"), filename="{step}", every_n_train_steps=1, save_top_k=-1, save_last=False
    )
    callbacks: list[Callback] = [checkpoints] + ([StopAt(out)] if mode == "killed" else [])
    trainer = L.Trainer(
        accelerator="cpu", devices=world // nodes, num_nodes=nodes, strategy="ddp" if world > 1 else "auto",
        max_epochs=2, limit_val_batches=0, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks, default_root_dir=str(out),
    )  # fmt: skip
    spec = KINDS[kind]
    model = RecordIds(spec.ids, str(out / f"ids-{mode}{rank}.jsonl"))
    dm = spec.make(out / kind, {"batch_size": batch, "eval_batch_size": EVAL_BATCH, **SETTINGS[setting]})
    resume = None
    if mode == "resume":
        resume = str(out / "ckpt" / f"step={(out / 'resume-step').read_text()}.ckpt")
    trainer.fit(model, datamodule=dm, ckpt_path=resume)


def main() -> None:
    out, kinds, setting, mode = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3], sys.argv[4]
    batch = int(sys.argv[5]) if len(sys.argv) > 5 else BATCH
    assert mode != "killed" or len(kinds) == 1, "a killed run stops in its one kind"
    for kind in kinds:
        fit(out / kind if len(kinds) > 1 else out, kind, setting, mode, batch)


if __name__ == "__main__":
    main()
