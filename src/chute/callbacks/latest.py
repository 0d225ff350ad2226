"""``LatestCheckpoint``: the run's latest state as ``last.ckpt``, what ``ckpt_path=last`` resumes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException


class LatestCheckpoint(ModelCheckpoint):
    """Keeps one checkpoint file, ``<dirpath>/last.ckpt``, of the latest training state.

    Written after every validation (or every training epoch, without validation) or, when one is
    set, every ``every_n_train_steps`` steps or ``train_time_interval`` instead (Lightning's rule);
    and always when training ends and when a SIGTERM stops it between training steps, so a restart
    resumes where the run stopped, not from an earlier save. It stands beside the
    checkpoint that keeps the best by a metric: ``ModelCheckpoint(monitor=..., save_last=True)``
    writes its ``last`` copy, since Lightning 2.6, only when the metric improved (the best epoch's
    state, under the name ``last``), and Lightning refuses ``every_n_train_steps`` together with
    the epoch-end save that would catch a run's last steps.

    Args:
        dirpath: Folder of the file.
        filename: Its name without ``.ckpt``.
        every_n_train_steps: Also save every that many training steps (mid-epoch resumption).
        train_time_interval: Also save at this interval of training time.
        kwargs: Other :class:`~lightning.pytorch.callbacks.ModelCheckpoint` arguments (``verbose``,
            ``save_weights_only``, ``save_on_train_epoch_end``).
    """

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str = "last",
        every_n_train_steps: int | None = None,
        train_time_interval: timedelta | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            monitor=None,
            save_top_k=1,
            enable_version_counter=False,
            every_n_train_steps=every_n_train_steps,
            train_time_interval=train_time_interval,
            **kwargs,
        )

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        # SIGTERM (a scheduler's notice) in training: Lightning stops between steps, every rank told
        # (rank 0's flag is broadcast), so the state is whole. Not in a validation pass: stopped part-way.
        training = not (trainer.validating or trainer.sanity_checking)
        if isinstance(exception, SIGTERMException) and training and not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        # the steps after the last periodic save (skipped when that save was of this very step)
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))
