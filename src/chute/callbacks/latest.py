"""``LatestCheckpoint``: the run's latest state as ``last.ckpt``, what ``ckpt_path=last`` resumes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

#: Key of a checkpoint taken inside a gradient-accumulation window (:meth:`LatestCheckpoint.on_save_checkpoint`).
INSIDE_A_WINDOW = "chute_inside_accumulation_window"


class LatestCheckpoint(ModelCheckpoint):
    """Keeps one checkpoint file, ``<dirpath>/last.ckpt``, of the latest training state.

    Written after every validation (or every training epoch, without validation) or, when one is
    set, every ``every_n_train_steps`` steps or ``train_time_interval`` instead (Lightning's rule);
    and always when training ends and when a SIGTERM stops it between training steps, so a restart
    resumes where the run stopped, not from an earlier save. That includes a SIGTERM during one of
    the fit's validations (which Lightning cuts short): the training state is that of the step the
    validation followed, and the restart goes on from there without running that validation again
    (before, nothing was saved and the restart went back to the previous save). It stands beside the
    checkpoint that keeps the best by a metric: ``ModelCheckpoint(monitor=..., save_last=True)``
    writes its ``last`` copy, since Lightning 2.6, only when the metric improved (the best epoch's
    state, under the name ``last``), and Lightning refuses ``every_n_train_steps`` together with
    the epoch-end save that would catch a run's last steps.

    Lightning keys a checkpoint callback's state in the checkpoint by its settings (``monitor``,
    the save intervals), not by its folder, and refuses two callbacks with the same key: two
    ``LatestCheckpoint`` in one Trainer need different intervals, as two ``ModelCheckpoint`` do.

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
        self._sigterm_deferred = False

    # With gradient accumulation a batch inside a window has gone through the model but not into the
    # weights: a checkpoint then counts it as trained on, and the resumed run skips it while its
    # gradient is lost (every later window shifted by one). So nothing is saved inside a window
    # (a mid-epoch validation there, a time interval), and a SIGTERM inside one stops training at
    # the window's end instead.

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._sigterm_deferred = False

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        connector = getattr(trainer, "_signal_connector", None)  # Lightning's SIGTERM flag
        if mid_accumulation(trainer):
            if trainer.received_sigterm and connector is not None:
                connector.received_sigterm, self._sigterm_deferred = False, True
            return
        super().on_train_batch_end(trainer, *args, **kwargs)
        if self._sigterm_deferred:
            # save now: a validation at this batch would be cut short by the flag, and nothing saved
            if not self._should_skip_saving_checkpoint(trainer):
                self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))
            self._give_back_sigterm(trainer)

    def _give_back_sigterm(self, trainer: L.Trainer) -> None:
        if self._sigterm_deferred and (connector := getattr(trainer, "_signal_connector", None)) is not None:
            connector.received_sigterm = True
        self._sigterm_deferred = False

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Any checkpoint of the fit (Lightning's SLURM plugin saves one whenever SIGUSR1 comes) says
        # whether it was taken inside a window: ckpt_path=last passes over such a one (chute.app).
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if mid_accumulation(trainer):
            checkpoint[INSIDE_A_WINDOW] = True

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        # Nothing may be saved inside an accumulation window: a SIGTERM in a validation there is held
        # to the window's end, as in training. (Elsewhere Lightning stops the validation at this
        # batch, and on_exception saves.)
        connector = getattr(trainer, "_signal_connector", None)
        held = trainer.received_sigterm and not trainer.sanity_checking and mid_accumulation(trainer)  # a fit's only
        if connector is not None and held:
            connector.received_sigterm, self._sigterm_deferred = False, True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not mid_accumulation(trainer):
            super().on_validation_end(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        self._give_back_sigterm(trainer)
        if stopped_whole(trainer, exception) and not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._give_back_sigterm(trainer)  # the fit ended inside a window (should_stop): still a SIGTERM
        super().on_train_end(trainer, pl_module)
        # the steps after the last periodic save (skipped when that save was of this very step)
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))


def stopped_whole(trainer: L.Trainer, exception: BaseException) -> bool:
    """Whether a fit stopped by a SIGTERM (a scheduler's notice) left a whole training state to save.

    Lightning checks the flag after each training step (every rank told there: rank 0's flag is
    broadcast) and after each batch of the fit's validations (each rank its own flag), and both
    are between training steps.
    Not inside an accumulation window, though (the signal is asynchronous: it can come after the
    last check there), nor inside a validation step (a checkpoint then makes Lightning resume in the
    middle of that validation). In a validation the exception may also be a consequence of the
    same signal: a scheduler signals every process of the job, and a DataLoader worker it killed
    is a dead-worker error at the next batch."""
    if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking or mid_accumulation(trainer):
        return False
    if not trainer.validating:
        return isinstance(exception, SIGTERMException)
    progress = trainer.fit_loop.epoch_loop.val_loop.batch_progress.total  # a _ProcessedTracker, typed as its base
    between_batches = getattr(progress, "processed", None) == getattr(progress, "started", None)
    return between_batches and (isinstance(exception, SIGTERMException) or trainer.received_sigterm)


def mid_accumulation(trainer: L.Trainer) -> bool:
    """Whether the last training batch only accumulated its gradient: the optimizer steps at the end
    of each ``accumulate_grad_batches`` window and at the epoch's last batch (Lightning's rule)."""
    window = trainer.accumulate_grad_batches
    if window <= 1 or trainer.state.fn != TrainerFn.FITTING:
        return False
    progress = trainer.fit_loop.epoch_loop.batch_progress
    ready = progress.current.ready
    last = progress.is_last_batch or ready == trainer.num_training_batches
    return ready > 0 and ready % window != 0 and not last
