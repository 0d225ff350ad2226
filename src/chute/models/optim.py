"""The optimizer and per-step learning-rate schedule the shipped models share."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch


def adamw_per_step(
    module: L.LightningModule, schedule: Literal["cosine", "one_cycle"] = "cosine", pct_start: float = 0.25
) -> dict[str, Any]:
    """AdamW with the module's ``lr``/``weight_decay`` hparams and a schedule stepped every batch.

    ``cosine`` decays from ``lr`` over the run; ``one_cycle`` warms up for ``pct_start`` of it first
    (at least 1.5 steps; runs of fewer than 3 steps only decay).
    """
    hp = module.hparams
    optimizer = torch.optim.AdamW(module.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    total = max(int(module.trainer.estimated_stepping_batches), 1)
    scheduler: torch.optim.lr_scheduler.LRScheduler
    if schedule == "cosine" or total < 3:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    else:
        # OneCycleLR divides by the warm-up's length in steps, pct_start * total - 1: keep it >= 0.5
        # step, so short runs (limit_train_batches, fast_dev_run) do not divide by zero.
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=hp["lr"], total_steps=total, pct_start=max(pct_start, 1.5 / total)
        )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
