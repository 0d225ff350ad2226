"""``ImageClassifier``: a backbone, cross-entropy and accuracy, for any ``(images, labels)`` DataModule."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.nn import functional as F
from torchmetrics.classification import MulticlassAccuracy

from chute.models.backbones import create_backbone


class ImageClassifier(L.LightningModule):
    """Classify normalized float images; hyperparameters are plain values, so checkpoints reload safely.

    Args:
        num_classes: Number of classes (chute's train app takes it from the DataModule).
        in_channels: Input channels (likewise).
        backbone: Registered backbone name (``small_cnn``, ``resnet18``).
        backbone_kwargs: Extra arguments for the backbone.
        lr: Peak learning rate of the one-cycle schedule (AdamW).
        weight_decay: AdamW weight decay.
        label_smoothing: Cross-entropy label smoothing.
        channels_last: Keep weights in channels-last format (matches chute's batches).

    Example:
        >>> model = ImageClassifier(num_classes=10, in_channels=1)
        >>> model(torch.zeros(2, 1, 16, 16)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        backbone: str = "small_cnn",
        backbone_kwargs: dict[str, Any] | None = None,
        lr: float = 3e-3,
        weight_decay: float = 5e-4,
        label_smoothing: float = 0.0,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = create_backbone(backbone, in_channels, num_classes, **dict(backbone_kwargs or {}))
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Float targets are class probabilities (MixUp/CutMix); integer targets are labels.
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.hparams["label_smoothing"])

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        logits = self(images)
        loss = self._loss(logits, targets)
        labels = targets.argmax(dim=1) if targets.is_floating_point() else targets
        self.train_acc(logits, labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(images))
        return loss

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, metric: MulticlassAccuracy) -> None:
        images, targets = batch
        logits = self(images)
        self.log(f"{stage}/loss", self._loss(logits, targets), prog_bar=True, batch_size=len(images))
        metric(logits, targets)
        self.log(f"{stage}/acc", metric, prog_bar=True, batch_size=len(images))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_acc)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        probs = self(images).float().softmax(dim=1)
        return {"probs": probs, "preds": probs.argmax(dim=1)}

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"]
        )
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.hparams["lr"], total_steps=max(total, 1), pct_start=0.25
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
