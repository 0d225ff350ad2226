"""A real 2-process DDP fit on the CPU (gloo), run by tests/test_ddp.py as a script.

    python tests/ddp_fit.py OUT_DIR STRATEGY [null]

Trains one epoch on a small imbalanced table whose only feature is the row id (unstandardized),
with chute's imbalance strategy STRATEGY; each rank writes the ids it received and its sampler's
draw to OUT_DIR/rank<r>.json. ``null``: the DataModule's seed is null (each rank must use the one
rank 0 draws).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn

from chute.callbacks import ClassHistogram
from chute.datamodules import TabularDataModule


class RecordIds(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 3)
        self.ids: list[int] = []

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        features, labels = batch[0], batch[1]
        self.ids += features[:, 0].round().long().tolist()
        return nn.functional.cross_entropy(self.layer(features * 0), labels)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def main() -> None:
    out, strategy = Path(sys.argv[1]), sys.argv[2]
    seed = None if sys.argv[3:] == ["null"] else 3
    out.mkdir(parents=True, exist_ok=True)
    table = out / "table.csv"
    if not table.exists():  # rank 0 runs first (the launcher starts the others after it)
        labels = np.repeat(["a", "b", "c"], [60, 20, 10])
        table.write_text("id,label\n" + "".join(f"{i},{c}\n" for i, c in enumerate(labels)))
    dm = TabularDataModule(
        str(table), target="label", numeric=["id"], standardize=False, val_path=str(table),
        loader={"batch_size": 12}, imbalance={"strategy": strategy}, seed=seed,
    )  # fmt: skip
    model = RecordIds()
    histogram = ClassHistogram(out_dir=str(out))
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[histogram],
        default_root_dir=str(out),
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    order = trainer.train_dataloader.sampler  # type: ignore[union-attr]
    sampler = getattr(order, "sampler", order)  # an index draw is cut into batches by chute.loader.Batched
    draw = [np.atleast_1d(x).tolist() for x in sampler.epoch_items(0)]
    row_labels = dm.dataset("train").targets.tolist()
    ids_to_row = {int(f): i for i, f in enumerate(dm.dataset("train").features[:, 0].tolist())}
    record = {
        "rank": trainer.global_rank, "world": trainer.world_size, "ids": model.ids, "draw_rows": draw,
        "id_of_row": {str(v): k for k, v in ids_to_row.items()}, "row_labels": row_labels,
        "sampler": type(sampler).__name__, "seed": dm.seed,
        "received": None if histogram.received is None else histogram.received.tolist(),
    }  # fmt: skip
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
