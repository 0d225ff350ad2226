"""``ImageClassifier``: a backbone, cross-entropy and accuracy, for any ``(images, labels)`` DataModule."""

from __future__ import annotations

from time import monotonic
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from chute.models.backbones import create_backbone
from chute.models.eval_loss import EvalLoss
from chute.models.metrics import EpochMetrics, MacroScore, log_epoch_metric
from chute.models.optim import adamw_per_step


class ImageClassifier(EpochMetrics, L.LightningModule):
    """Classify normalized float images; hyperparameters are plain values, so checkpoints reload safely.

    Args:
        num_classes: Number of classes (chute's train app takes it from the DataModule).
        in_channels: Input channels (likewise).
        backbone: Registered backbone name (``small_cnn``, ``resnet18``).
        backbone_kwargs: Extra arguments for the backbone.
        lr: Peak learning rate of the one-cycle schedule (AdamW).
        weight_decay: AdamW weight decay.
        label_smoothing: Cross-entropy label smoothing.
        class_weights: Per-class loss weights (the ``loss_weights`` imbalance strategy; chute's train
            app passes the DataModule's ``class_weights``).
        channels_last: Keep weights in channels-last format (matches chute's batches).

    Example:
        >>> model = ImageClassifier(num_classes=10, in_channels=1)
        >>> model(torch.zeros(2, 1, 16, 16)).shape
        torch.Size([2, 10])
    """

    class_weights: torch.Tensor | None  # a buffer: follows the module to its device
    bar_every_s = 0.5  # seconds: the progress bar's loss is logged at most this often (see on_train_batch_end)

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        backbone: str = "small_cnn",
        backbone_kwargs: dict[str, Any] | None = None,
        lr: float = 3e-3,
        weight_decay: float = 5e-4,
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.eval_loss = EvalLoss()  # val/test loss: one sample-weighted mean over all ranks
        self.net = create_backbone(backbone, in_channels, num_classes, **dict(backbone_kwargs or {}))
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        if weights is not None and weights.shape != (num_classes,):
            raise ValueError(f"class_weights has {len(weights)} values for {num_classes} classes")
        self.register_buffer("class_weights", weights, persistent=False)
        self._step_loss: torch.Tensor | None = None  # the last training step's loss, for the progress bar
        self._bar_at: float | None = None  # when the bar's loss was last logged (monotonic)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        # Class-balanced views of validation/test: mean per-class recall and macro-F1 (torchmetrics'
        # values, counted without a read back to the host per step: MacroScore).
        self.eval_balanced = nn.ModuleDict(
            {
                f"{stage}_{name}": metric
                for stage in ("val", "test")
                for name, metric in (
                    ("bal_acc", MacroScore(num_classes, "recall")),
                    ("macro_f1", MacroScore(num_classes, "f1")),
                )
            }
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def epoch_metrics(self, stage: str) -> list[Metric]:
        if stage == "train":
            return [self.train_acc]
        balanced = [metric for key, metric in self.eval_balanced.items() if key.startswith(f"{stage}_")]
        return [self.val_acc if stage == "val" else self.test_acc, *self.eval_loss.stage(stage), *balanced]  # type: ignore[list-item]

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Float targets are class probabilities (MixUp/CutMix); integer targets are labels.
        return F.cross_entropy(
            logits.float(), targets, weight=self.class_weights, label_smoothing=self.hparams["label_smoothing"]
        )

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        logits = self(images)
        loss = self._loss(logits, targets)
        labels = targets.argmax(dim=1) if targets.is_floating_point() else targets
        self.train_acc.update(logits, labels)  # logged per epoch: no per-batch value to compute
        self.log("train/loss", loss, batch_size=len(images))
        log_epoch_metric(self, "train/acc", self.train_acc, batch_idx, batch_size=len(images))
        self._step_loss = loss.detach()  # for the bar (Lightning's outputs["loss"] is divided under accumulation)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """The progress bar's ``loss``: the training loss read back to the host on Lightning's
        logging steps (every ``log_every_n_steps`` optimizer steps) at most every
        :attr:`bar_every_s` seconds, and at each epoch's end.

        Lightning turns every ``prog_bar`` metric into a Python number after every batch, whether a
        bar shows it or not (Lightning issue #21232): on a GPU, a wait for the device at the end of
        every step, so the host cannot queue the next step while the device works. So
        ``train/loss`` (loggers, callbacks, checkpoints' monitors) stays a device tensor, which
        Lightning reads back only when it logs, and the bar gets a host copy made right then. Each
        ``self.log`` call costs 0.4-0.7 ms of Python between two steps (Lightning moves the logged
        metric's whole state to the value's device every call): on the default experiment's 8 ms
        steps, logging the bar every 10th step was 0.5 points of its data wait, for a number no one
        reads ten times a second.
        """
        trainer, loss = self._trainer, self._step_loss
        self._step_loss = None
        if trainer is None or trainer.progress_bar_callback is None or loss is None:
            return
        every = max(int(getattr(trainer, "log_every_n_steps", 50)), 1)  # set by Lightning's logger connector
        # Lightning logs on the batches that step the optimizer (the last of each accumulation window)
        stepped = (batch_idx + 1) % max(trainer.accumulate_grad_batches, 1) == 0
        now = monotonic()
        due = self._bar_at is None or now - self._bar_at >= self.bar_every_s
        if (stepped and trainer.global_step % every == 0 and due) or trainer.is_last_batch:
            self._bar_at = now
            self.log("loss", loss.float().cpu(), prog_bar=True, logger=False, batch_size=1)

    def _eval_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, metric: MulticlassAccuracy, batch_idx: int = 0
    ) -> torch.Tensor | None:
        """Log the stage's loss and metrics for ``batch``; return its logits (``None`` for an empty batch)."""
        images, targets = batch
        if len(targets) == 0:  # every image of the batch was unreadable and left out (on_error=skip)
            return None
        logits = self(images)
        self.eval_loss.log(self, stage, self._loss(logits, targets), len(images), prog_bar=True, batch_idx=batch_idx)
        metric.update(logits, targets)  # these are logged per epoch: no per-batch values to compute
        log_epoch_metric(self, f"{stage}/acc", metric, batch_idx, batch_size=len(images), prog_bar=True)
        for name in ("bal_acc", "macro_f1"):
            balanced = self.eval_balanced[f"{stage}_{name}"]
            assert isinstance(balanced, Metric)
            balanced.update(logits, targets)
            log_epoch_metric(self, f"{stage}/{name}", balanced, batch_idx, batch_size=len(images))
        return logits

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_acc, batch_idx)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_acc, batch_idx)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        if len(images) == 0:  # every image of the batch was unreadable and left out (on_error=skip)
            empty = torch.empty(0, self.hparams["num_classes"], device=images.device)
            return {"probs": empty, "preds": empty.argmax(dim=1)}
        probs = self(images).float().softmax(dim=1)
        return {"probs": probs, "preds": probs.argmax(dim=1)}

    def configure_optimizers(self) -> Any:
        return adamw_per_step(self, "one_cycle", pct_start=0.25)
