"""The suite's own rules hold where it runs (issue 26)."""

from __future__ import annotations

import lightning as L
import pytest
from lightning.pytorch.accelerators import CUDAAccelerator


def test_a_cpu_trainer_on_a_gpu_machine_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Warnings are errors in this suite, and the GPU tests build CPU Trainers beside GPU ones on
    purpose; Lightning's "GPU available but not used" must not fail them on a GPU machine."""
    monkeypatch.setattr(CUDAAccelerator, "is_available", staticmethod(lambda: True))
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
