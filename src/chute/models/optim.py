"""The optimizer and per-step learning-rate schedule the shipped models share."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch

from chute.errors import ConfigError


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
        scheduler = _Cosine(optimizer, T_max=total)
    else:
        # OneCycleLR divides by the warm-up's length in steps, pct_start * total - 1: keep it >= 0.5
        # step, so short runs (limit_train_batches, fast_dev_run) do not divide by zero.
        scheduler = _OneCycle(optimizer, max_lr=hp["lr"], total_steps=total, pct_start=max(pct_start, 1.5 / total))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _same_length(saved: int | None, planned: int) -> None:
    """A resumed run goes on with the schedule its checkpoint planned: refuse one of another length.

    The checkpoint's schedule replaces the one planned for this run. Over fewer steps than this run
    takes, one-cycle stops with PyTorch's "Tried to step N times" at its end and cosine's learning
    rate climbs back up (it is periodic); over more, neither reaches its end.
    """
    if saved != planned:
        raise ConfigError(
            "ckpt_path",
            f"a checkpoint of a run of {saved if saved is not None else 'an unknown number of'} steps",
            f"this run takes {planned} steps (trainer.max_epochs, trainer.max_steps, trainer.limit_train_batches, "
            "trainer.accumulate_grad_batches, the batch size, the number of devices or the data differ from the "
            "run that saved it), and the "
            "learning-rate schedule is planned over the whole run: resume with the settings it started with",
        )


def _planned_steps(state_dict: dict[str, Any]) -> int | None:
    """The length a saved schedule of either kind was planned over (runs of < 3 steps save a cosine)."""
    saved = state_dict.get("total_steps", state_dict.get("T_max"))
    return int(saved) if saved is not None else None


class _OneCycle(torch.optim.lr_scheduler.OneCycleLR):
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        _same_length(_planned_steps(state_dict), self.total_steps)
        super().load_state_dict(state_dict)


class _Cosine(torch.optim.lr_scheduler.CosineAnnealingLR):
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        _same_length(_planned_steps(state_dict), self.T_max)
        super().load_state_dict(state_dict)
