"""Helpers shared by tests (importable, unlike conftest)."""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn


def write_image(path: Path, size: tuple[int, int] = (40, 30), seed: int = 0, mode: str = "RGB") -> Path:
    """A small real image file (format from the suffix) with random content."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).convert(mode).save(path)
    return path


def assert_mentions(message: str, *parts: str) -> None:
    """Assert that an error message names every one of ``parts`` (file, row, column, key, value...)."""
    missing = [p for p in parts if p not in message]
    assert not missing, f"{missing} not in message: {message}"


class RecordRows(L.LightningModule):
    """A linear model on a table (default: the 30-feature breast-cancer one) that records the first
    feature of every training row (unique per row), to compare the rows two runs trained on; and the
    epoch of each step."""

    def __init__(self, num_features: int = 30, num_classes: int = 2) -> None:
        super().__init__()
        self.layer = nn.Linear(num_features, num_classes)
        self.seen: list[list[float]] = []
        self.epochs: list[int] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.seen.append(batch[0][:, 0].tolist())
        self.epochs.append(self.current_epoch)
        return nn.functional.cross_entropy(self.layer(batch[0]), batch[1])

    def per_epoch(self) -> dict[int, list[float]]:
        """The rows trained on, epoch by epoch."""
        rows: dict[int, list[float]] = {}
        for epoch, batch in zip(self.epochs, self.seen, strict=True):
            rows.setdefault(epoch, []).extend(batch)
        return rows

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit_recording(
    datamodule: L.LightningDataModule,
    root: Path,
    ckpt: str | None = None,
    every: int = 0,
    max_steps: int = -1,
    callbacks: list[L.Callback] | None = None,
) -> list[list[float]]:
    """Fit :class:`RecordRows` for 2 epochs (no validation) and return the rows each step trained on;
    ``every``: also checkpoint every that many steps into ``root``; ``ckpt``: resume from it."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    callbacks = list(callbacks or [])
    if every:
        callbacks.append(ModelCheckpoint(dirpath=root, every_n_train_steps=every, save_top_k=-1))
    model = RecordRows()
    trainer = L.Trainer(
        max_epochs=2, max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=callbacks, default_root_dir=root,
        enable_checkpointing=bool(every),
    )  # fmt: skip
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt)
    return model.seen


def overfit_rows(datamodule: L.LightningDataModule, model: RecordRows | None = None) -> dict[int, list[float]]:
    """Fit ``model`` (default :class:`RecordRows`) for 3 epochs with ``Trainer(overfit_batches=2)``
    (no validation) and return the rows each epoch trained on."""
    model = model or RecordRows()
    L.Trainer(
        max_epochs=3, overfit_batches=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    ).fit(model, datamodule=datamodule)  # fmt: skip
    return model.per_epoch()


class SigtermAt(L.Callback):
    """Sends this process SIGTERM after training step ``step`` (what a cluster scheduler does)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGTERM)


class SigtermInValidation(L.Callback):
    """Sends this process SIGTERM after batch ``batch`` of the fit's validation after training step
    ``step`` (a scheduler's notice arriving while the run validates); with ``rank``, only that rank's
    process (Lightning's own launcher passes it on to the ranks it started)."""

    def __init__(self, step: int, rank: int | None = None, batch: int = 0) -> None:
        self.step, self.rank, self.batch = step, rank, batch

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        if self.rank is not None and trainer.global_rank != self.rank:
            return
        if not trainer.sanity_checking and trainer.global_step == self.step and batch_idx == self.batch:
            import signal

            os.kill(os.getpid(), signal.SIGTERM)


def collect_in_a_cycle(
    start: Callable[[], tuple[object, ...]], monkeypatch: pytest.MonkeyPatch
) -> tuple[list[Any], list[int | None]]:
    """Run ``start()`` (it starts a loader's workers and returns the objects that own them), leave
    those objects in a reference cycle, drop them and collect: the worker processes ``start`` began,
    and the pids that ``terminate`` was called for meanwhile (torch's last resort for a worker that
    did not end when told to)."""
    terminated: list[int | None] = []
    terminate = multiprocessing.process.BaseProcess.terminate
    monkeypatch.setattr(
        multiprocessing.process.BaseProcess, "terminate", lambda p: (terminated.append(p.pid), terminate(p))[1]
    )
    earlier = {p.pid for p in multiprocessing.active_children()}
    cycle: list[object] = [*start()]
    workers = [p for p in multiprocessing.active_children() if p.pid not in earlier]
    cycle.append(cycle)
    del cycle
    gc.collect()
    return workers, terminated


def two_rank_records(script: str, *args: str, out: Path) -> list[dict[str, Any]]:
    """Run ``tests/<script>`` with ``args`` in ``out`` (it starts a 2-rank DDP run whose ranks each
    write ``rank<r>.json`` there, with ``"world"``) and return both records, rank 0 first.

    The repository comes first on the path (the script imports ``tests.*``), then any
    ``PYTHONPATH`` already set (a checkout's own ``src``, say)."""
    repo = Path(__file__).resolve().parents[1]
    path = [str(repo), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": os.pathsep.join(path)}
    proc = subprocess.run(
        [sys.executable, str(repo / "tests" / script), *args],
        cwd=out, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    return ranks


class CutError(Exception):
    """What :class:`CutAt` raises: a fit stopped as if its process died, on every rank."""


class CutAt(L.Callback):
    """Raises :class:`CutError` at the end of training step ``step`` (``trainer.global_step`` then)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            raise CutError
