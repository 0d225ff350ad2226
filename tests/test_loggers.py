"""chute's TensorBoardLogger: files written every few seconds, not at every logging step, and nothing lost."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

from chute import loggers
from chute.loggers import TensorBoardLogger


def _counting_flushes(logger: TensorBoardLogger) -> list[int]:
    flushes = [0]
    flush = logger.experiment.flush

    def counted() -> None:
        flushes[0] += 1
        flush()

    logger.experiment.flush = counted
    return flushes


def test_saves_within_the_period_write_nothing_and_the_first_and_later_ones_do(tmp_path: Path, monkeypatch) -> None:
    now = [100.0]
    monkeypatch.setattr(loggers, "monotonic", lambda: now[0])
    logger = TensorBoardLogger(tmp_path, name="tb", version="", flush_every_s=5.0)
    logger.log_hyperparams({"lr": 0.1})
    flushes = _counting_flushes(logger)
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.save()
    assert flushes[0] == 1  # the first save is done
    assert (tmp_path / "tb" / "hparams.yaml").is_file()
    for step in range(1, 5):
        now[0] += 1.0
        logger.log_metrics({"loss": 1.0 / step}, step=step)
        logger.save()
    assert flushes[0] == 1  # 4 s later: nothing written
    now[0] += 1.0
    logger.save()
    assert flushes[0] == 2  # 5 s after the last write
    logger.log_metrics({"loss": 0.1}, step=5)
    logger.save()
    logger.finalize("success")  # writes everything, whenever the last save was
    assert flushes[0] >= 3
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [0, 1, 2, 3, 4, 5]


def test_the_period_defaults_the_writers_own_and_is_checked(tmp_path: Path) -> None:
    for kwargs, flush_secs in (({}, 2.0), ({"flush_secs": 7}, 7)):
        logger = TensorBoardLogger(tmp_path, flush_every_s=2.0, **kwargs)
        assert logger.experiment.flush_secs == flush_secs
        logger.finalize("success")
    with pytest.raises(ValueError, match="flush_every_s=0"):
        TensorBoardLogger(tmp_path, flush_every_s=0)


class _Regression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_fit_logging_every_step_writes_a_few_times_and_every_scalar_reaches_the_files(tmp_path: Path) -> None:
    data = TensorDataset(torch.randn(320, 4), torch.randn(320, 1))
    logger = TensorBoardLogger(tmp_path, name="tb", version="", flush_every_s=60.0)
    flushes = _counting_flushes(logger)
    trainer = L.Trainer(
        max_epochs=2, log_every_n_steps=1, logger=logger, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(_Regression(), DataLoader(data, batch_size=16))
    assert trainer.global_step == 40
    assert flushes[0] <= 3  # Lightning's own logger: one per logged step, 40
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(40))
