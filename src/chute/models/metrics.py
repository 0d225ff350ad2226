"""Classification metrics that accumulate on the device without reading anything back per batch."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import lightning as L
import torch
from torchmetrics import Metric


class EpochMetrics:
    """For chute's LightningModules: each fit, validation and test run starts its stage's epoch
    metrics empty (:meth:`epoch_metrics` names them).

    Lightning resets a logged metric at the end of each epoch; a run cut short (an exception, a
    stop) leaves its updates in the metric. The next run on the same module would then count the
    dead run's batches too, and a resumed epoch's metric, never at its first update again, would not
    be logged (:func:`log_epoch_metric`). And ``trainer.validate``/``test`` reset the evaluation
    metrics inside inference mode, which leaves their states inference tensors that ``fit``'s
    validation (``no_grad``, outside inference mode) cannot update: ``fit`` after ``validate``
    failed with "Inplace update to inference tensor outside InferenceMode". So each run's start
    resets its stage's metrics, outside inference mode. A subclass that overrides these hooks calls
    ``super()``.
    """

    def epoch_metrics(self, stage: str) -> Iterable[Metric]:
        """The metrics logged per epoch for ``stage`` (``train``, ``val`` or ``test``)."""
        raise NotImplementedError

    def _reset_epoch_metrics(self, stage: str) -> None:
        with torch.inference_mode(False):
            for metric in self.epoch_metrics(stage):
                metric.reset()

    def on_train_start(self) -> None:
        super().on_train_start()  # type: ignore[misc]
        self._reset_epoch_metrics("train")

    def on_validation_start(self) -> None:
        super().on_validation_start()  # type: ignore[misc]
        self._reset_epoch_metrics("val")

    def on_test_start(self) -> None:
        super().on_test_start()  # type: ignore[misc]
        self._reset_epoch_metrics("test")


def log_epoch_metric(
    module: L.LightningModule, name: str, metric: Metric, batch_idx: int, *, batch_size: int, prog_bar: bool = False
) -> None:
    """``module.log(name, metric, on_step=False, on_epoch=True)``, on the steps that need it; call it
    after the step's ``metric.update``.

    Lightning computes a logged torchmetrics ``Metric`` at the end of the loop's epoch from the
    metric's own state (every update since its last reset) and then resets it: the ``log`` call only
    registers it. Each call costs 0.4-0.7 ms of Python between steps (Lightning moves the metric's
    whole state to the value's device every time), so it is made on the metric's first update since
    its reset (an epoch's first batch, or the first after a mid-epoch resume: :class:`EpochMetrics`
    resets a stage's metrics when its run starts) and on each loop's first batch, not on every step.
    The value is the same.
    """
    if metric.update_count == 1 or batch_idx == 0:
        module.log(name, metric, on_step=False, on_epoch=True, prog_bar=prog_bar, batch_size=batch_size)


class MacroScore(Metric):
    """Macro-averaged recall (``"recall"``: balanced accuracy) or F1 (``"f1"``) over ``num_classes``,
    from a confusion matrix counted where the batches are.

    The values are torchmetrics' ``MulticlassAccuracy(average="macro")`` and
    ``MulticlassF1Score(average="macro")`` (a class neither predicted nor present is left out of the
    mean; a 0/0 score is 0). Those count through ``torch.bincount``, which on a GPU sizes its output
    by reading the data's maximum back: a wait for the device at every evaluation step. Here an
    ``index_add_`` into the matrix, read once, at ``compute``.

    Args:
        num_classes: Number of classes.
        kind: ``"recall"`` or ``"f1"``.
    """

    full_state_update = False
    counts: torch.Tensor

    def __init__(self, num_classes: int, kind: Literal["recall", "f1"] = "recall") -> None:
        super().__init__()
        if kind not in ("recall", "f1"):
            raise ValueError(f"kind={kind!r}: 'recall' or 'f1'")
        self.num_classes, self.kind = int(num_classes), kind
        self.add_state("counts", default=torch.zeros(self.num_classes**2, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """``logits`` (N, C) (or predicted labels (N,)) against integer ``targets`` (N,)."""
        preds = logits.argmax(dim=1) if logits.is_floating_point() and logits.ndim == 2 else logits
        cells = targets.reshape(-1).long() * self.num_classes + preds.reshape(-1).long()
        self.counts.index_add_(0, cells, torch.ones_like(cells))

    def compute(self) -> torch.Tensor:
        matrix = self.counts.view(self.num_classes, self.num_classes).double()  # rows: targets
        tp = matrix.diagonal()
        fn, fp = matrix.sum(dim=1) - tp, matrix.sum(dim=0) - tp
        top, bottom = (tp, tp + fn) if self.kind == "recall" else (2 * tp, 2 * tp + fp + fn)
        score = torch.where(bottom > 0, top / bottom.clamp(min=1), torch.zeros_like(top))
        seen = (tp + fp + fn > 0).double()
        total = seen.sum()
        return torch.where(total > 0, (score * seen).sum() / total.clamp(min=1), total).float()
