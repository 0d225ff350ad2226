"""Evaluation losses that mean the same under DDP: one sample-weighted mean over every rank."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric


class EvalLoss(nn.Module):
    """Validation and test loss as :class:`~torchmetrics.MeanMetric` s weighted by batch size.

    ``self.log("val/loss", loss)`` averages per rank, and Lightning then reports rank 0's figure
    (or, with ``sync_dist``, a mean of rank means, which uneven per-rank counts skew). A metric
    accumulates ``sum(loss * n)`` and ``sum(n)`` and syncs both at epoch end, so the logged value is
    the mean over each evaluated sample exactly once, whatever the ranks' shares.
    Training keeps Lightning's per-step loss.
    """

    def __init__(self) -> None:
        super().__init__()
        self.means = nn.ModuleDict({stage: MeanMetric() for stage in ("val", "test")})

    def log(self, module: L.LightningModule, stage: str, loss: torch.Tensor, size: int, prog_bar: bool) -> None:
        """Log ``loss`` (a batch mean over ``size`` samples) as ``<stage>/loss``."""
        if stage not in self.means:
            module.log(f"{stage}/loss", loss, prog_bar=prog_bar, batch_size=size)
            return
        mean = self.means[stage]
        assert isinstance(mean, MeanMetric)
        mean.update(loss.detach().float(), weight=size)
        module.log(f"{stage}/loss", mean, on_step=False, on_epoch=True, prog_bar=prog_bar, batch_size=size)
