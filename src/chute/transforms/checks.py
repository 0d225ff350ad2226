"""Checks run on pipelines at ``setup``, before any batch is loaded."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from chute.errors import ConfigError

_TRIALS = 12


def check_deterministic(
    transform: Callable[[torch.Tensor], Any], sample: torch.Tensor, key: str = "val_transform"
) -> None:
    """Raise if ``transform`` gives different outputs for the same input.

    The pipeline runs ``_TRIALS`` times on ``sample`` and on noise of the same shape (so flips and
    crops of a symmetric image still show), under different seeds; global random state is
    restored afterwards. A random pipeline is narrowed down to its first random step.

    Raises:
        ConfigError: naming the random step (``key=<step>: ...``).
    """
    noise = torch.randint(0, 256, sample.shape, dtype=sample.dtype, generator=torch.Generator().manual_seed(0))
    for image in (sample, noise):
        if _is_deterministic(transform, image):
            continue
        steps = getattr(transform, "steps", None) or [(repr(transform), transform)]
        x = image
        for position, (name, step) in enumerate(steps, start=1):
            if not _is_deterministic(step, x):
                raise ConfigError(
                    key,
                    name,
                    f"step {position} of {len(steps)} returned different outputs for the same input. Validation, "
                    "test and predict pipelines must be deterministic: move random transforms to the train pipeline.",
                )
            x = step(x)
        raise ConfigError(key, repr(transform), "returned different outputs for the same input")


def _is_deterministic(fn: Callable[[torch.Tensor], Any], image: torch.Tensor) -> bool:
    with _preserved_rng():
        outputs = []
        for trial in range(_TRIALS):
            random.seed(trial)
            np.random.seed(trial)
            torch.manual_seed(trial)
            reseed = getattr(fn, "reseed", None)
            if callable(reseed):
                reseed(trial)
            outputs.append(_as_tensor(fn(image.clone())))
    return all(o.shape == outputs[0].shape and torch.equal(o, outputs[0]) for o in outputs[1:])


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return torch.as_tensor(np.asarray(x))


@contextmanager
def _preserved_rng() -> Iterator[None]:
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
