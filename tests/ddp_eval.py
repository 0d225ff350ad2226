"""Training and validation under real multi-process DDP on the CPU (gloo), run by tests/test_ddp.py.

    python tests/ddp_eval.py OUT_DIR KIND PROCESSES WORKERS

KIND is ``image`` (an image folder whose pixels encode each sample's id), ``table`` (a CSV whose
only feature is the row id), ``sequence`` (JSONL token sequences whose first token encodes the id)
``multitask`` (a CSV with a class and a regression target, feature = row id), ``stream`` (the
table as JSONL shards through StreamingDataModule) or ``litdata`` (the table as LitData chunks
through LitDataModule). One epoch; every rank writes the training and validation ids it received
and the synced ``val/loss`` to OUT_DIR/eval-rank<r>.json. The loss of sample ``i`` is a known
function of ``i``, so the test can tell a mean over each sample once from one with padded duplicates.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import nn

from chute.datamodules import (
    ImageFolderDataModule,
    LitDataModule,
    MultiTaskDataModule,
    SequenceDataModule,
    StreamingDataModule,
    TabularDataModule,
)
from chute.datamodules.litdata import LitDataCopy
from chute.datasets import ShardedCopy
from chute.models.eval_loss import EvalLoss
from chute.transforms import create_transforms

VAL_SAMPLES = 23  # not a multiple of 2 or 3: ranks get uneven shares
TRAIN_IMAGES = 10  # image kind; the table kinds train on the same 23 rows
BATCH = 4
TABLE_KINDS = ("table", "multitask", "stream", "litdata")  # the only feature is the row id


def logits_of(ids: torch.Tensor) -> torch.Tensor:
    """Per-sample logits that depend on the id, so each sample has its own loss."""
    x = ids.float() / VAL_SAMPLES
    return torch.stack([x, 1 - x, 0.5 * torch.ones_like(x)], dim=1)


class RecordEval(L.LightningModule):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.layer = nn.Linear(1, 1)
        self.eval_loss = EvalLoss()
        self.val_ids: list[int] = []
        self.train_ids: list[int] = []
        self.train_batches = 0

    def ids(self, batch: Any) -> torch.Tensor:
        if self.kind == "sequence":
            return batch["inputs"][:, 0].long() - 2
        inputs = batch["inputs"] if isinstance(batch, dict) else batch[0]
        if self.kind in TABLE_KINDS:
            return inputs[:, 0].round().long()
        pixels = (inputs[:, 0, 0, :2].float() * 255).round().long()  # mean 0, std 1: x / 255
        return pixels[:, 0] * 256 + pixels[:, 1]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.train_ids += self.ids(batch).tolist()
        self.train_batches += 1
        # Every step all-reduces gradients: uneven step counts across ranks would hang.
        return sum(p.sum() for p in self.parameters()) * 0.0

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        ids = self.ids(batch)
        self.val_ids += ids.tolist()
        loss = nn.functional.cross_entropy(logits_of(ids), ids % 3)
        self.eval_loss.log(self, "val", loss, len(ids), prog_bar=False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def write_images(root: Path) -> None:
    for split, n in (("train", TRAIN_IMAGES), ("val", VAL_SAMPLES)):
        for i in range(n):
            pixels = np.zeros((8, 8), dtype=np.uint8)
            pixels[0, 0], pixels[0, 1] = i // 256, i % 256
            folder = root / split / f"c{i % 3}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels, mode="L").save(folder / f"{i:03d}.png")


def main() -> None:
    out, kind, processes, workers = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    out.mkdir(parents=True, exist_ok=True)
    loader = {"batch_size": BATCH, "num_workers": workers}
    table = out / "val.csv"
    if kind in TABLE_KINDS and not table.exists():  # rank 0 runs first, then the others
        rows = "".join(f"{i},c{i % 3},{i * 0.5}\n" for i in range(VAL_SAMPLES))
        table.write_text("id,label,value\n" + rows)
    if kind == "table":
        dm: L.LightningDataModule = TabularDataModule(
            str(table), target="label", numeric=["id"], standardize=False, val_path=str(table), loader=loader,
        )  # fmt: skip
    elif kind == "stream":  # the table as JSONL shards (rank 0 writes them in prepare_data)
        source = TabularDataModule(str(table), target="label", numeric=["id"], standardize=False, val_path=str(table))
        dm = StreamingDataModule(out / "shards", prepare=ShardedCopy(source, 5), loader=loader, shuffle_buffer=8)
    elif kind == "litdata":  # the table as LitData chunks of 5 rows (rank 0 writes them in prepare_data)
        source = TabularDataModule(str(table), target="label", numeric=["id"], standardize=False, val_path=str(table))
        dm = LitDataModule(out / "chunks", prepare=LitDataCopy(source, chunk_size=5), loader=loader)
    elif kind == "multitask":
        tasks = {"cls": {"column": "label", "type": "classification"}, "reg": {"column": "value", "type": "regression"}}
        dm = MultiTaskDataModule(
            str(table), tasks=tasks, numeric=["id"], standardize=False, val_path=str(table), loader=loader
        )
    elif kind == "sequence":
        root = out / "sequences"
        if not (root / "val.jsonl").exists():
            root.mkdir(parents=True, exist_ok=True)
            lines = "".join(
                json.dumps({"tokens": [i + 2] + [3] * (1 + i % 5), "label": i % 3}) + "\n" for i in range(VAL_SAMPLES)
            )
            (root / "train.jsonl").write_text(lines)
            (root / "val.jsonl").write_text(lines)
        dm = SequenceDataModule(root, loader=loader)
    else:
        root = out / "images"
        if not (root / "val").exists():
            write_images(root)
        t = create_transforms(image_size=8, crop_pct=1.0, scale=[1.0, 1.0], ratio=[1.0, 1.0], hflip=0.0)
        dm = ImageFolderDataModule(
            root, image_mode="L", train_transform=t.train, val_transform=t.val, mean=[0.0], std=[1.0],
            channels_last=False, loader=loader,
        )  # fmt: skip
    model = RecordEval(kind)
    trainer = L.Trainer(
        accelerator="cpu", devices=processes, strategy="ddp", max_epochs=1, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(out),
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    record = {
        "rank": trainer.global_rank, "world": trainer.world_size, "val_ids": model.val_ids,
        "train_ids": model.train_ids, "train_batches": model.train_batches,
        "val_loss": float(trainer.callback_metrics["val/loss"]),
    }  # fmt: skip
    (out / f"eval-rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
