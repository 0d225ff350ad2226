"""Classification metrics that accumulate on the device without reading anything back per batch."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
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
    resets its stage's metrics, outside inference mode.

    A training epoch resumed mid-way goes on counting from where the checkpoint was taken, so its
    ``train/...`` values are those of the uninterrupted epoch (they counted only the batches after the
    resume before). Lightning keeps no metric state in a checkpoint, and a metric's own
    ``persistent`` states would give every rank rank 0's share under DDP. So each checkpoint of a fit
    holds the training metrics' states summed over the ranks (torchmetrics' own reduction, the one
    ``compute`` uses), and a fit resumed from it gives them to rank 0 alone, the others starting
    empty: their sum is the saved one whatever the number of ranks now. Metrics whose states are
    lists (concatenated) or reduced by a mean are left out and start empty, as before.

    A subclass that overrides these hooks calls ``super()``.
    """

    #: The training metrics' states a checkpoint restored, with the trainer that restored it, until that
    #: fit's training starts (:meth:`on_load_checkpoint`, :meth:`on_train_start`).
    _resumed_train_metrics: tuple[Any, dict[str, Any]] | None = None

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
        stash, self._resumed_train_metrics = self._resumed_train_metrics, None
        trainer = getattr(self, "_trainer", None)
        if stash is None or trainer is None or stash[0] is not trainer or stash[1]["epoch"] != trainer.current_epoch:
            return  # a fresh fit, or one resumed at an epoch's end
        saved = stash[1]
        with torch.inference_mode(False):
            for metric, states in zip(self.epoch_metrics("train"), saved["metrics"], strict=False):
                if states is None:
                    continue
                if trainer.global_rank == 0:
                    _put_states(metric, states)
                metric._chute_resumed = True  # log it at its next update (log_epoch_metric)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]
        trainer = getattr(self, "_trainer", None)
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return
        # Every rank saves (Lightning's save_checkpoint ends in a barrier), so every rank joins the sum.
        # A save after a validation runs in its context, inference mode with NCCL: the states the sync
        # puts back must stay tensors that training can update.
        with torch.inference_mode(False):
            metrics = [_summed_states(metric) for metric in self.epoch_metrics("train")]
        checkpoint[TRAIN_METRICS_KEY] = {"epoch": trainer.current_epoch, "metrics": metrics}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
        trainer = getattr(self, "_trainer", None)
        fitting = trainer is not None and trainer.state.fn == TrainerFn.FITTING  # not load_from_checkpoint
        saved = checkpoint.get(TRAIN_METRICS_KEY) if fitting else None
        self._resumed_train_metrics = None if saved is None else (trainer, saved)  # for this fit's start only

    def on_validation_start(self) -> None:
        super().on_validation_start()  # type: ignore[misc]
        self._reset_epoch_metrics("val")

    def on_test_start(self) -> None:
        super().on_test_start()  # type: ignore[misc]
        self._reset_epoch_metrics("test")


#: Key of the training metrics' states in a fit's checkpoint (:class:`EpochMetrics`).
TRAIN_METRICS_KEY = "chute_train_metric_states"

_SUMMABLE = ("sum", "max", "min")  # reductions whose result, beside empty states, reduces to itself


def _summed_states(metric: Metric) -> dict[str, Any] | None:
    """``metric``'s states reduced over the ranks (each rank's own, in one process), on the CPU, and
    its update count; None for a metric whose states cannot be restored on one rank alone."""
    reductions = metric._reductions
    if not metric._defaults:
        return None  # a wrapper whose states are its inner metrics' (MinMaxMetric, ClasswiseWrapper)
    for name, default in metric._defaults.items():
        fx = reductions.get(name)
        if not isinstance(default, torch.Tensor) or getattr(fx, "__name__", "").split("_")[-1] not in _SUMMABLE:
            return None
    count = metric.update_count
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed:
        total = torch.tensor([count], dtype=torch.int64, device=getattr(metric, next(iter(metric._defaults))).device)
        torch.distributed.all_reduce(total)
        count = int(total.item())
    with metric.sync_context(should_sync=distributed):
        states = {name: getattr(metric, name).detach().to("cpu", copy=True) for name in metric._defaults}
    return {"states": states, "update_count": count}


def _put_states(metric: Metric, saved: dict[str, Any]) -> None:
    states = saved["states"]
    if set(states) != set(metric._defaults) or any(v.shape != getattr(metric, k).shape for k, v in states.items()):
        return  # not this metric's states (the model's metrics changed since): it starts empty
    for name, value in states.items():
        current = getattr(metric, name)
        setattr(metric, name, value.to(device=current.device, dtype=current.dtype))
    metric._update_count = int(saved["update_count"])
    metric._computed = None


def log_epoch_metric(
    module: L.LightningModule, name: str, metric: Metric, batch_idx: int, *, batch_size: int, prog_bar: bool = False
) -> None:
    """``module.log(name, metric, on_step=False, on_epoch=True)``, on the steps that need it; call it
    after the step's ``metric.update``.

    Lightning computes a logged torchmetrics ``Metric`` at the end of the loop's epoch from the
    metric's own state (every update since its last reset) and then resets it: the ``log`` call only
    registers it. Each call costs 0.4-0.7 ms of Python between steps (Lightning moves the metric's
    whole state to the value's device every time), so it is made on the metric's first update since
    its reset (an epoch's first batch), on its first update after a mid-epoch resume (on every rank,
    though rank 0 then goes on from the checkpoint's counts: :class:`EpochMetrics` marks it) and on
    each loop's first batch, not on every step. The value is the same.
    """
    if metric.update_count == 1 or batch_idx == 0 or getattr(metric, "_chute_resumed", False):
        metric._chute_resumed = False
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
