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
    resumes where the run stopped, not from an earlier save. A SIGTERM during a validation of the
    fit is held to the validation's end, where this checkpoint is written, and the fit stops there
    (Lightning cut the validation short and nothing was saved, so the restart went back to the
    previous save); where the step before the validation is saved already, the validation is cut
    short as Lightning does, so the stop is not delayed for nothing. It stands beside the
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
        # A SIGTERM in a validation of the fit: Lightning raises after this batch and nothing is saved.
        # Held instead to the validation's end, where this step is saved (inside an accumulation
        # window: to the window's end, as in training); not where this step is saved already (a
        # SIGTERM held through a window was saved before this validation): there the stop is not put off.
        connector = getattr(trainer, "_signal_connector", None)
        fitting = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
        if connector is None or not trainer.received_sigterm or not fitting:
            return
        if mid_accumulation(trainer) or self._last_global_step_saved != trainer.global_step:
            connector.received_sigterm, self._sigterm_deferred = False, True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not mid_accumulation(trainer):
            super().on_validation_end(trainer, pl_module)
            self._give_back_sigterm(trainer)  # held through the validation: the fit stops after its save

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        self._give_back_sigterm(trainer)
        # SIGTERM (a scheduler's notice) in training: Lightning stops between steps, every rank told
        # (rank 0's flag is broadcast), so the state is whole, unless it came inside an accumulation
        # window after the last check (the signal is asynchronous): then the last save stands.
        # Not in a validation pass either: stopped part-way.
        training = not (trainer.validating or trainer.sanity_checking)
        whole = training and not mid_accumulation(trainer)
        if isinstance(exception, SIGTERMException) and whole and not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._give_back_sigterm(trainer)  # the fit ended inside a window (should_stop): still a SIGTERM
        super().on_train_end(trainer, pl_module)
        # the steps after the last periodic save (skipped when that save was of this very step)
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))


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
