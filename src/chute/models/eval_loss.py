"""Evaluation losses that mean the same under DDP: one sample-weighted mean over every rank."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torchmetrics import Metric

from chute.models.metrics import log_epoch_metric


class WeightedMean(Metric):
    """``sum(value * weight) / sum(weight)``, summed over ranks at the end: accumulated where the
    values are, without reading anything back per update.

    torchmetrics' ``MeanMetric`` asks the device after every update whether the value is NaN (a
    host read: on a GPU, a wait for the device at every evaluation step) and then drops such
    batches; with that check off (``nan_strategy="disable"``) it ignores the weights. Here a
    non-finite batch makes the mean non-finite, as it would any mean.
    """

    full_state_update = False
    total: torch.Tensor
    weight: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("weight", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor, weight: float) -> None:
        self.total += value.detach().float() * weight
        self.weight += weight

    def compute(self) -> torch.Tensor:
        return self.total / self.weight


class EvalLoss(nn.Module):
    """Validation and test loss as :class:`WeightedMean` s weighted by batch size.

    ``self.log("val/loss", loss)`` averages per rank, and Lightning then reports rank 0's figure
    (or, with ``sync_dist``, a mean of rank means, which uneven per-rank counts skew). A metric
    accumulates ``sum(loss * n)`` and ``sum(n)`` and syncs both at epoch end, so the logged value is
    the mean over each evaluated sample exactly once, whatever the ranks' shares.
    Training keeps Lightning's per-step loss.
    """

    def __init__(self) -> None:
        super().__init__()
        self.means = nn.ModuleDict({stage: WeightedMean() for stage in ("val", "test")})

    def stage(self, stage: str) -> list[Metric]:
        """``stage``'s mean as a list (empty for training, whose loss is logged per step)."""
        return [self.means[stage]] if stage in self.means else []  # type: ignore[list-item]

    def log(
        self,
        module: L.LightningModule,
        stage: str,
        loss: torch.Tensor,
        size: int,
        prog_bar: bool,
        batch_idx: int | None = None,
    ) -> None:
        """Log ``loss`` (a batch mean over ``size`` samples) as ``<stage>/loss``. With the step's
        ``batch_idx`` the mean is logged only on the steps that need it
        (:func:`~chute.models.metrics.log_epoch_metric`); without, on every step."""
        if stage not in self.means:
            module.log(f"{stage}/loss", loss, prog_bar=prog_bar, batch_size=size)
            return
        mean = self.means[stage]
        assert isinstance(mean, WeightedMean)
        mean.update(loss, weight=size)
        first = 0 if batch_idx is None else batch_idx  # batch 0: always logged
        log_epoch_metric(module, f"{stage}/loss", mean, first, batch_size=size, prog_bar=prog_bar)
