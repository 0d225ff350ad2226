"""The contract every chute DataModule honours, checked by one routine (like torchvision's check_transform)."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from typing import Any

import torch

from chute.datamodules import ChuteDataModule

STAGES = ("fit", "validate", "test", "predict")
LOADERS = ("train_dataloader", "val_dataloader", "test_dataloader", "predict_dataloader")


def _inputs(batch: Any) -> torch.Tensor:
    return batch["inputs"] if isinstance(batch, dict) else batch[0]


def check_datamodule(
    make: Callable[[], ChuteDataModule], batch_size: int, cpu_dtype: torch.dtype = torch.uint8
) -> ChuteDataModule:
    """Run a fresh DataModule from ``make()`` through prepare, setup, loaders, hook, pickling and state.

    ``cpu_dtype`` is the dtype of the inputs the DataLoader yields (image pipelines stay ``uint8``
    until the device hook; tables are float32 already; token ids int64). Returns the set-up
    DataModule for further, module-specific assertions.
    """
    dm = make()
    dm.prepare_data()
    dm.prepare_data()  # idempotent
    for stage in STAGES:
        dm.setup(stage)
    dm.setup("fit")  # setup may run twice

    for name in LOADERS:
        loader = getattr(dm, name)()
        batch = next(iter(loader))
        inputs = _inputs(batch)
        assert len(inputs) <= batch_size, name
        assert inputs.dtype == cpu_dtype, f"{name}: CPU batches should be {cpu_dtype}, got {inputs.dtype}"
        ready = dm.batch_hook(batch, train=False)  # the normalization; training-only stages change shapes
        x = _inputs(ready)
        if cpu_dtype.is_floating_point or cpu_dtype == torch.uint8:
            assert x.is_floating_point(), f"{name}: the device hook must hand the model floats"
            assert torch.isfinite(x).all()
        assert x.shape == inputs.shape
        targets = ready[1] if not isinstance(ready, dict) else ready["targets"]
        for target in targets.values() if isinstance(targets, dict) else [targets]:  # multi-task: one per task
            assert len(target) == len(x)

    # The module and its datasets must pickle (spawned workers, DDP launchers, checkpoints of hparams).
    clone = pickle.loads(pickle.dumps(dm))
    assert type(clone) is type(dm)
    pickle.dumps(dm.train_dataloader().dataset)

    # state_dict round trip into a fresh module: same state, and it still sets up and loads.
    state = copy.deepcopy(dm.state_dict())
    fresh = make()
    fresh.load_state_dict(state)
    fresh.prepare_data()
    fresh.setup("fit")
    assert fresh.state_dict() == state
    next(iter(fresh.val_dataloader()))
    return dm
