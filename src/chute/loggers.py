"""``TensorBoardLogger``: Lightning's, writing its files every few seconds instead of at every logging step."""

from __future__ import annotations

from time import monotonic
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger as _LightningTensorBoardLogger


class TensorBoardLogger(_LightningTensorBoardLogger):
    """Lightning's ``TensorBoardLogger``, with its ``save()`` done at most every ``flush_every_s`` seconds.

    Lightning calls ``save()`` after every ``log_metrics``: every ``log_every_n_steps`` training steps.
    Lightning's logger then waits for the event writer's thread to write and flush what is queued,
    and looks up ``hparams.yaml`` on the file system, between two training steps. That took 0.1 ms
    on an idle core and 0.3-1.1 ms while a loader thread worked, every 10th step of the default
    experiment (8 ms steps): 0.5 points of its data wait (docs/benchmarks.md). Here the first call
    and any call ``flush_every_s`` after the last one do it; the event writer's own thread flushes
    on the same period (``flush_secs``) however few steps log, and ``finalize`` (the end of a run,
    or a stop on an error or a SIGTERM) writes everything. A run killed outright loses at most the
    last ``flush_every_s`` seconds of scalars (with ``flush_secs`` left at its default).

    Args:
        flush_every_s: Seconds between writes to disk (TensorBoard's own reload period is 30 s).
        *args, **kwargs: Lightning's ``TensorBoardLogger`` arguments (``flush_secs`` defaults to
            ``flush_every_s``).
    """

    def __init__(self, *args: Any, flush_every_s: float = 5.0, **kwargs: Any) -> None:
        if not flush_every_s > 0:
            raise ValueError(f"flush_every_s={flush_every_s}: seconds, > 0")
        kwargs.setdefault("flush_secs", flush_every_s)
        super().__init__(*args, **kwargs)
        self.flush_every_s = flush_every_s
        self._saved_at: float | None = None

    def save(self) -> None:
        now = monotonic()
        if self._saved_at is not None and now - self._saved_at < self.flush_every_s:
            return
        super().save()
        self._saved_at = now

    def finalize(self, status: str) -> None:
        self._saved_at = None  # Lightning's finalize saves on success: that save is always done
        super().finalize(status)
