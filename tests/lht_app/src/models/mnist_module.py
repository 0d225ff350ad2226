"""A classification LightningModule in the template's manner: a ``net``, partial optimizer and
scheduler, and ``train/*``, ``val/*``, ``val/acc_best`` and ``test/*`` metrics."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification.accuracy import Accuracy


class MNISTLitModule(L.LightningModule):
    def __init__(
        self, net: torch.nn.Module, optimizer: Any, scheduler: Any, compile: bool = False, num_classes: int = 10
    ) -> None:
        super().__init__()
        # (the partial optimizer and scheduler are kept out of the checkpoint, which then loads with
        # torch.load(weights_only=True) for trainer.test(ckpt_path="best"))
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        self.make_optimizer, self.make_scheduler = optimizer, scheduler
        self.net = net
        self.criterion = torch.nn.CrossEntropyLoss()
        classes = net.model[-1].out_features if hasattr(net, "model") else num_classes
        self.acc = {split: Accuracy(task="multiclass", num_classes=classes) for split in ("train", "val", "test")}
        for split, metric in self.acc.items():
            self.add_module(f"{split}_acc", metric)
        self.loss = {split: MeanMetric() for split in ("train", "val", "test")}
        for split, metric in self.loss.items():
            self.add_module(f"{split}_loss", metric)
        self.val_acc_best = MaxMetric()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: Any, split: str) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = self.criterion(logits, y)
        self.loss[split](loss)
        self.acc[split](logits.argmax(dim=1), y)
        self.log(f"{split}/loss", self.loss[split], on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{split}/acc", self.acc[split], on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def on_train_start(self) -> None:
        self.val_acc_best.reset()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best(self.acc["val"].compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.make_optimizer(params=self.trainer.model.parameters())
        scheduler = self.make_scheduler(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss"}}
