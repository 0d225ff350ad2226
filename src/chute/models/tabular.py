"""``TabularModel``: an MLP for ``(features, targets[, weights])`` batches, classification or regression."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import MeanAbsoluteError, MeanSquaredError, Metric
from torchmetrics.classification import MulticlassAccuracy

from chute.models.eval_loss import EvalLoss
from chute.models.metrics import EpochMetrics, log_epoch_metric
from chute.models.optim import adamw_per_step


def mlp(in_features: int, hidden: Sequence[int], out_features: int, dropout: float = 0.0) -> nn.Sequential:
    """Linear -> LayerNorm -> GELU -> Dropout blocks, then a linear head."""
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.LayerNorm(size), nn.GELU(), nn.Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


class TabularModel(EpochMetrics, L.LightningModule):
    """An MLP over standardized features; per-sample weights (a third batch element) scale the loss.

    Classification logs ``{stage}/acc``; regression logs ``{stage}/rmse`` and ``{stage}/mae``.

    Args:
        num_features: Input width (chute's train app takes it from the DataModule).
        num_classes: Classes for classification; ignored for regression.
        task: ``classification`` or ``regression``.
        hidden: Hidden layer widths.
        dropout: Dropout after each hidden layer.
        lr: AdamW learning rate (cosine decay over the run).
        weight_decay: AdamW weight decay.
        class_weights: Per-class loss weights (classification; the ``loss_weights`` imbalance strategy).

    Example:
        >>> model = TabularModel(num_features=4, num_classes=3)
        >>> model(torch.zeros(2, 4)).shape
        torch.Size([2, 3])
    """

    class_weights: torch.Tensor | None  # a buffer: follows the module to its device

    def __init__(
        self,
        num_features: int,
        num_classes: int = 2,
        task: Literal["classification", "regression"] = "classification",
        hidden: Sequence[int] = (64, 64),
        dropout: float = 0.1,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        class_weights: list[float] | None = None,
    ) -> None:
        super().__init__()
        if task not in ("classification", "regression"):
            raise ValueError(f"task={task!r}: must be 'classification' or 'regression'")
        self.save_hyperparameters()
        self.eval_loss = EvalLoss()  # val/test loss: one sample-weighted mean over all ranks
        self.task = task
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)
        self.net = mlp(num_features, list(hidden), num_classes if task == "classification" else 1, dropout)
        self.metrics = nn.ModuleDict()
        for stage in ("train", "val", "test"):
            if task == "classification":
                self.metrics[f"{stage}_acc"] = MulticlassAccuracy(num_classes, average="micro")
            else:
                self.metrics[f"{stage}_rmse"] = MeanSquaredError(squared=False)
                self.metrics[f"{stage}_mae"] = MeanAbsoluteError()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.net(features)
        return out.squeeze(-1) if self.task == "regression" else out

    def epoch_metrics(self, stage: str) -> list[Metric]:
        mine = [m for name, m in self.metrics.items() if name.startswith(f"{stage}_")]
        return [*mine, *self.eval_loss.stage(stage)]  # type: ignore[list-item]

    def _step(self, batch: Sequence[torch.Tensor], stage: str, batch_idx: int = 0) -> torch.Tensor:
        features, targets = batch[0], batch[1]
        weights = batch[2] if len(batch) > 2 else None
        output = self(features).float()
        if self.task == "classification":
            losses = F.cross_entropy(output, targets, weight=self.class_weights, reduction="none")
        else:
            losses = F.mse_loss(output, targets.float(), reduction="none")
        loss = losses.mean() if weights is None else (losses * weights).sum() / weights.sum().clamp_min(1e-12)
        self.eval_loss.log(self, stage, loss, len(targets), prog_bar=stage != "train", batch_idx=batch_idx)
        for name, metric in self.metrics.items():
            assert isinstance(metric, Metric)
            if name.startswith(f"{stage}_"):
                metric.update(output, targets)  # logged per epoch: no per-batch value to compute
                key = f"{stage}/{name.split('_', 1)[1]}"
                log_epoch_metric(self, key, metric, batch_idx, batch_size=len(targets), prog_bar=stage == "val")
        return loss

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", batch_idx)

    def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val", batch_idx)

    def test_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test", batch_idx)

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        features = batch[0] if isinstance(batch, (tuple, list)) else batch
        output = self(features).float()
        return output.softmax(dim=1) if self.task == "classification" else output

    def configure_optimizers(self) -> Any:
        return adamw_per_step(self, "cosine")
