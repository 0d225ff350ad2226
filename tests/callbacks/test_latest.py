"""LatestCheckpoint: last.ckpt is the state the run stopped in, whatever the monitored metric did."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from chute.callbacks import LatestCheckpoint
from chute.callbacks.latest import INSIDE_A_WINDOW
from tests.helpers import SigtermInValidation


def _fit(tmp_path: Path, model: L.LightningModule, *callbacks: L.Callback, validate: bool = True) -> None:
    L.Trainer(
        default_root_dir=tmp_path, max_epochs=3, limit_train_batches=8, limit_val_batches=2 if validate else 0,
        logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
    ).fit(model)  # fmt: skip


def _saved(path: Path) -> tuple[int, int]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["epoch"], state["global_step"]


class _Worse(BoringModel):
    """Logs a metric that is best at the first epoch and worse every epoch after."""

    def validation_step(self, batch: object, batch_idx: int) -> None:
        self.log("score", float(-self.current_epoch))


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_last_is_the_final_epoch_beside_a_best_checkpoint_that_stopped_improving(tmp_path: Path) -> None:
    best = ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="score", mode="max")
    _fit(tmp_path, _Worse(), best, LatestCheckpoint(tmp_path))
    assert _saved(tmp_path / "best.ckpt") == (0, 8)
    assert _saved(tmp_path / "last.ckpt") == (2, 24)
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
@pytest.mark.parametrize("validate", [True, False])
def test_saving_every_n_steps_still_saves_the_last_steps(tmp_path: Path, validate: bool) -> None:
    """Every 5 steps of 8 per epoch: the periodic saves end at step 20, the run at 24."""
    _fit(tmp_path, BoringModel(), LatestCheckpoint(tmp_path, every_n_train_steps=5), validate=validate)
    assert _saved(tmp_path / "last.ckpt")[1] == 24


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_two_in_one_trainer_need_different_intervals(tmp_path: Path) -> None:
    """Lightning keys a checkpoint callback's state by its settings, not its folder (the docstring)."""
    with pytest.raises(RuntimeError, match="more than one stateful callback of type `LatestCheckpoint`"):
        _fit(tmp_path, BoringModel(), LatestCheckpoint(tmp_path / "a"), LatestCheckpoint(tmp_path / "b"))
    _fit(
        tmp_path,
        BoringModel(),
        LatestCheckpoint(tmp_path / "a"),
        LatestCheckpoint(tmp_path / "b", every_n_train_steps=5),
    )
    assert _saved(tmp_path / "a" / "last.ckpt")[1] == _saved(tmp_path / "b" / "last.ckpt")[1] == 24


def test_random_state_restores_every_global_generator_and_loads_weights_only(tmp_path: Path) -> None:
    import random

    import numpy as np

    from chute.callbacks import RandomState

    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    torch.save(RandomState().state_dict(), tmp_path / "state.pt")

    def draws() -> tuple[list[float], list[float], list[float]]:
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]

    expected = draws()
    draws()
    RandomState().load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert draws() == expected


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
@pytest.mark.parametrize(("interval", "saved_at"), [(3, [5]), (2, [2, 4, 5])])
def test_nothing_is_saved_inside_a_gradient_accumulation_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interval: int, saved_at: list[int]
) -> None:
    """Accumulating in twos, a validation after batch 3 came inside a window: last.ckpt then counted
    batch 3 as trained on while its gradient was only held, and the resumed run skipped it."""
    ready: list[int] = []
    save = LatestCheckpoint._save_topk_checkpoint

    def recorded(self: LatestCheckpoint, trainer: L.Trainer, *args: object) -> None:
        ready.append(trainer.fit_loop.epoch_loop.batch_progress.current.ready)
        save(self, trainer, *args)

    monkeypatch.setattr(LatestCheckpoint, "_save_topk_checkpoint", recorded)
    L.Trainer(
        default_root_dir=tmp_path, max_epochs=1, limit_train_batches=5, limit_val_batches=1,
        val_check_interval=interval, accumulate_grad_batches=2, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[LatestCheckpoint(tmp_path)],
    ).fit(BoringModel())  # fmt: skip
    assert sorted(set(ready)) == saved_at


class _Term(L.Callback):
    """SIGTERM to this process after training batch ``batch`` of epoch 1; ``stop``: also end the fit there."""

    def __init__(self, batch: int, stop: bool = False) -> None:
        self.batch, self.stop = batch, stop

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        if trainer.current_epoch == 1 and args[-1] == self.batch:
            os.kill(os.getpid(), signal.SIGTERM)
            trainer.should_stop = self.stop


def _accumulating(tmp_path: Path, *callbacks: L.Callback, val: int = 2) -> L.Trainer:
    return L.Trainer(
        default_root_dir=tmp_path, max_epochs=3, limit_train_batches=6, limit_val_batches=val,
        accumulate_grad_batches=2, num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=list(callbacks),
    )  # fmt: skip


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_a_sigterm_held_to_the_windows_end_saves_there_though_validation_follows(tmp_path: Path) -> None:
    """SIGTERM inside the epoch's last window: the stop waits for the window's end, where validation
    follows; the flag set back there cut that validation short and nothing was saved (last.ckpt
    stayed at the previous epoch's end, step 3)."""
    with pytest.raises(SystemExit):
        _accumulating(tmp_path, _Term(4), LatestCheckpoint(tmp_path)).fit(BoringModel())
    assert _saved(tmp_path / "last.ckpt") == (1, 6)


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_a_sigterm_held_when_the_fit_ends_inside_the_window_still_stops_it_and_no_later_fit(tmp_path: Path) -> None:
    """A fit ending inside the window (``should_stop``, as EarlyStopping sets it) returned as if no
    SIGTERM had come, and the held one then stopped the next fit of the same callback."""
    latest = LatestCheckpoint(tmp_path / "ckpt")
    trainer = _accumulating(tmp_path, _Term(2, stop=True), latest, val=0)
    trainer.fit(BoringModel())
    assert trainer.received_sigterm
    latest.dirpath = str(tmp_path / "again")
    again = _accumulating(tmp_path / "again", latest, val=0)
    again.fit(BoringModel())
    assert again.global_step == 9
    assert not again.received_sigterm


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_a_checkpoint_taken_inside_a_window_says_so(tmp_path: Path) -> None:
    """Lightning's SLURM plugin saves whenever SIGUSR1 comes; ``ckpt_path=last`` passes over a
    checkpoint marked as taken inside a window (chute.app._resume_path)."""

    class Save(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
            trainer.save_checkpoint(tmp_path / f"at{args[-1]}.ckpt")

    _accumulating(tmp_path, Save(), LatestCheckpoint(tmp_path / "last"), val=0).fit(BoringModel())
    marked = [torch.load(tmp_path / f"at{i}.ckpt", weights_only=True).get(INSIDE_A_WINDOW) for i in range(6)]
    assert marked == [True, None, True, None, True, None]


class _TermInValidation(SigtermInValidation):
    """SIGTERM after validation batch ``batch`` of the validation at ``step``; counts the validation
    batches each validation ran."""

    def __init__(self, step: int, batch: int = 1) -> None:
        super().__init__(step, batch=batch)
        self.ran: dict[int, int] = {}

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: object, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        if not trainer.sanity_checking:
            self.ran[trainer.global_step] = self.ran.get(trainer.global_step, 0) + 1
        super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)


def _validating_often(tmp_path: Path, *callbacks: L.Callback, accumulate: int = 1) -> L.Trainer:
    return L.Trainer(
        default_root_dir=tmp_path, max_epochs=2, limit_train_batches=8, limit_val_batches=4, val_check_interval=4,
        accumulate_grad_batches=accumulate, num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=list(callbacks),
    )  # fmt: skip


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")  # the restart's, as intended
@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before")  # BoringModel's plain loader
def test_a_sigterm_during_a_mid_epoch_validation_saves_the_step_it_followed_and_the_restart_goes_on(
    tmp_path: Path,
) -> None:
    """The validation after step 12 (the middle of epoch 1) gets a SIGTERM at its second batch:
    Lightning stops it there, last.ckpt is step 12, and the restart trains from step 12 on without
    validating it again. Before, nothing was saved: last.ckpt stayed at step 8, and the restart
    trained steps 9-12 again."""
    term = _TermInValidation(step=12)
    with pytest.raises(SystemExit):
        _validating_often(tmp_path, term, LatestCheckpoint(tmp_path)).fit(BoringModel())
    assert term.ran == {4: 4, 8: 4, 12: 2}
    assert _saved(tmp_path / "last.ckpt") == (1, 12)

    again, seen = _TermInValidation(step=-1), []

    class Steps(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
            seen.append(trainer.global_step)

    trainer = _validating_often(tmp_path, again, Steps(), LatestCheckpoint(tmp_path))
    trainer.fit(BoringModel(), ckpt_path=tmp_path / "last.ckpt")
    assert seen == [12, 13, 14, 15]
    assert again.ran == {16: 4}
    assert not trainer.received_sigterm
    assert _saved(tmp_path / "last.ckpt") == (1, 16)


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_a_sigterm_during_a_validation_inside_a_window_is_held_to_the_windows_end(tmp_path: Path) -> None:
    """With windows of 3 batches the validation after batch 4 of epoch 0 falls inside one (steps go
    at batches 3, 6 and the epoch's last): the SIGTERM waits for the window to close and that step
    is saved."""
    term = _TermInValidation(step=1)
    with pytest.raises(SystemExit):
        _validating_often(tmp_path, term, LatestCheckpoint(tmp_path), accumulate=3).fit(BoringModel())
    assert term.ran == {1: 4}
    assert _saved(tmp_path / "last.ckpt") == (0, 2)


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_a_sigterm_during_validate_alone_still_stops_it(tmp_path: Path) -> None:
    """Only a fit's validation is held (it has a training state to save); ``trainer.validate`` stops."""
    term = _TermInValidation(step=0)
    trainer = _validating_often(tmp_path, term, LatestCheckpoint(tmp_path))
    with pytest.raises(SystemExit):
        trainer.validate(BoringModel())
    assert term.ran == {0: 2}
    assert not (tmp_path / "last.ckpt").exists()
