"""``MultiTaskModel``: a shared MLP trunk with one head per task, per-task losses and metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import MeanAbsoluteError, MeanSquaredError, Metric
from torchmetrics.classification import MulticlassAccuracy

from chute.models.eval_loss import EvalLoss
from chute.models.metrics import EpochMetrics, log_epoch_metric
from chute.models.optim import adamw_per_step
from chute.models.tabular import mlp


class MultiTaskModel(EpochMetrics, L.LightningModule):
    """Heads for classification and regression tasks on one trunk; the loss is a weighted sum.

    Per-sample weights (a ``"weights"`` batch entry) scale every task's loss. Regression heads
    predict the standardized target (with the training ``mean``/``std`` given in ``heads``), so
    tasks in different units weigh in comparably; metrics are in the target's units.
    Logs ``{stage}/loss``, ``{stage}/{task}/loss`` and ``{stage}/{task}/acc`` (classification) or
    ``{stage}/{task}/rmse`` and ``/mae`` (regression).

    Args:
        num_features: Input width (chute's train app takes it from the DataModule).
        heads: One per task: ``{name: {"type": "classification", "num_classes": K}}`` or
            ``{name: {"type": "regression", "mean": m, "std": s}}`` (likewise).
        task_weights: Loss weight per task (missing tasks weigh 1.0).
        hidden: Trunk widths; each head is one linear layer.
        dropout: Dropout in the trunk.
        lr: AdamW learning rate (cosine decay).
        weight_decay: AdamW weight decay.

    Example:
        >>> model = MultiTaskModel(4, {"kind": {"type": "classification", "num_classes": 3},
        ...                            "size": {"type": "regression", "mean": 10.0, "std": 2.0}})
        >>> {k: tuple(v.shape) for k, v in model(torch.zeros(2, 4)).items()}
        {'kind': (2, 3), 'size': (2,)}
    """

    def __init__(
        self,
        num_features: int,
        heads: Mapping[str, Mapping[str, Any]],
        task_weights: Mapping[str, float] | None = None,
        hidden: Sequence[int] = (64, 64),
        dropout: float = 0.1,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__()
        unknown = set(task_weights or {}) - set(heads)
        if unknown:
            raise ValueError(f"task_weights names tasks {sorted(unknown)} that the data does not have: {list(heads)}")
        self.save_hyperparameters()
        self.eval_loss = EvalLoss()  # val/test loss: one sample-weighted mean over all ranks
        self.tasks = {name: dict(spec) for name, spec in heads.items()}
        self.weights = {name: float((task_weights or {}).get(name, 1.0)) for name in heads}
        widths = list(hidden)
        self.trunk = mlp(num_features, widths[:-1], widths[-1], dropout)
        self.heads = nn.ModuleDict()
        self.metrics = nn.ModuleDict()
        for name, spec in self.tasks.items():
            classify = spec["type"] == "classification"
            self.heads[name] = nn.Linear(widths[-1], int(spec["num_classes"]) if classify else 1)
            for stage in ("train", "val", "test"):
                if classify:
                    self.metrics[f"{stage}__{name}__acc"] = MulticlassAccuracy(
                        int(spec["num_classes"]), average="micro"
                    )
                else:
                    self.metrics[f"{stage}__{name}__rmse"] = MeanSquaredError(squared=False)
                    self.metrics[f"{stage}__{name}__mae"] = MeanAbsoluteError()

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per task: logits, or the regression prediction in the target's units."""
        h = F.gelu(self.trunk(features))
        out = {}
        for name, spec in self.tasks.items():
            y = self.heads[name](h).float()
            out[name] = y if spec["type"] == "classification" else y.squeeze(-1) * spec["std"] + spec["mean"]
        return out

    def epoch_metrics(self, stage: str) -> list[Metric]:
        mine = [m for key, m in self.metrics.items() if key.split("__")[0] == stage]
        return [*mine, *self.eval_loss.stage(stage)]  # type: ignore[list-item]

    def _step(self, batch: dict[str, Any], stage: str, batch_idx: int = 0) -> torch.Tensor:
        outputs = self(batch["inputs"])
        size = len(batch["inputs"])
        total = torch.zeros((), device=batch["inputs"].device)
        weights = batch.get("weights")  # per-sample, from the data's weight column
        for name, spec in self.tasks.items():
            output, target = outputs[name], batch["targets"][name]
            if spec["type"] == "classification":
                losses = F.cross_entropy(output, target, reduction="none")
            else:  # on the standardized scale
                scaled = (output - spec["mean"]) / spec["std"]
                losses = F.mse_loss(scaled, (target.float() - spec["mean"]) / spec["std"], reduction="none")
            loss = losses.mean() if weights is None else (losses * weights).sum() / weights.sum().clamp_min(1e-12)
            total = total + self.weights[name] * loss
            self.log(f"{stage}/{name}/loss", loss, batch_size=size)
            for key, metric in self.metrics.items():
                assert isinstance(metric, Metric)
                metric_stage, task, what = key.split("__")
                if metric_stage == stage and task == name:
                    metric.update(output, target)  # logged per epoch: no per-batch value to compute
                    log_epoch_metric(self, f"{stage}/{name}/{what}", metric, batch_idx, batch_size=size)
        self.eval_loss.log(self, stage, total, size, prog_bar=stage != "train", batch_idx=batch_idx)
        return total

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", batch_idx)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val", batch_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "test", batch_idx)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        outputs = self(batch["inputs"])
        return {
            name: out.softmax(dim=1) if self.tasks[name]["type"] == "classification" else out
            for name, out in outputs.items()
        }

    def configure_optimizers(self) -> Any:
        return adamw_per_step(self, "cosine")
