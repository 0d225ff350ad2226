"""A 2-process DDP fit on the CPU (gloo), cut mid-epoch and resumed, run by
tests/models/test_tabular.py as a script:

    python tests/ddp_resume_metrics.py OUT_DIR whole|cut|resume

Trains a TabularModel on the breast-cancer table for 2 epochs of 8 steps a rank. ``whole`` runs
them through; ``cut`` saves a checkpoint after every step and after each validation, and stops at
step 11 (epoch 1, 3 of its 8 steps trained; the stop is an exception raised on every rank);
``resume`` goes on from ``OUT_DIR/ckpt/step=10.ckpt``. Each rank writes the epoch metrics it ends with and its training
metric's update count to ``OUT_DIR/<mode>-rank<r>.json``.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from chute.datamodules import TabularDataModule
from chute.datasets import SklearnTable
from chute.models import TabularModel
from tests.helpers import CutAt, CutError


def main() -> None:
    out, mode = Path(sys.argv[1]), sys.argv[2]
    table = SklearnTable("breast_cancer")(out / "cancer.csv")  # idempotent: every rank may call it
    dm = TabularDataModule(str(table), target="diagnosis", loader={"batch_size": 32}, seed=0)
    L.seed_everything(0)
    model = TabularModel(**_kwargs(dm), dropout=0.0)
    callbacks: list[Callback] = []
    if mode == "cut":
        every = ModelCheckpoint(dirpath=out / "ckpt", every_n_train_steps=1, save_top_k=-1, filename="{step}")
        after_validation = ModelCheckpoint(dirpath=out / "val", filename="{epoch}")  # saved in validation's context
        callbacks = [every, after_validation, CutAt(11)]
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False, num_sanity_val_steps=0,
        enable_checkpointing=mode == "cut", enable_progress_bar=False, enable_model_summary=False,
        callbacks=callbacks, default_root_dir=str(out),
    )  # fmt: skip
    with contextlib.suppress(CutError):
        trainer.fit(model, datamodule=dm, ckpt_path=str(out / "ckpt" / "step=10.ckpt") if mode == "resume" else None)
    record = {
        "world": trainer.world_size,
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "train_updates": [m.update_count for m in model.epoch_metrics("train")],
    }
    (out / f"{mode}-rank{trainer.global_rank}.json").write_text(json.dumps(record))


def _kwargs(dm: TabularDataModule) -> dict[str, object]:
    dm.prepare_data()
    dm.setup("fit")
    return dict(dm.model_kwargs)


if __name__ == "__main__":
    main()
