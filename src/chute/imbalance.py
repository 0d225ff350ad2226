"""Class-imbalance strategies: settings, class weights and the choice of sampler.

``strategy``:

- ``none``: plain shuffling.
- ``weighted_sampler``: draw ``epoch_length`` samples with probability proportional to their
  class weight (``weighting``: ``inverse`` frequency, ``inverse_sqrt``, or the effective number
  of samples of Cui et al., CVPR 2019, ``(1 - beta) / (1 - beta ** n)``).
- ``balanced_batches``: every batch holds ``classes_per_batch`` classes (P) x ``batch_size / P``
  samples each (K); classes cycle through their samples so all are used.
- ``loss_weights``: plain shuffling; the DataModule exposes ``class_weights`` (training split only)
  for the model's loss.
- ``oversample`` / ``undersample``: repeat minority samples / drop majority samples until the
  largest class is at most ``target_ratio`` times the smallest, then shuffle.

Every sampling strategy draws ``epoch_length`` samples per epoch (default: the training set's size,
so strategies train with the same budget). The samplers draw per (seed, epoch), identically on every
rank, and split the draw across ranks (the draws, and :func:`~chute.loader.draws.build_sampler`
that picks one, live in :mod:`chute.loader.draws`). This module does
not import torch, so ``train.py`` checks ``imbalance.*`` before the heavy imports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from chute.errors import ConfigError, DataError, check_bool

STRATEGIES = ("none", "weighted_sampler", "balanced_batches", "loss_weights", "oversample", "undersample")
WEIGHTINGS = ("inverse", "inverse_sqrt", "effective_number")
SAMPLING = ("weighted_sampler", "balanced_batches", "oversample", "undersample")


# The strategies each setting applies to: one set for another strategy would be ignored, so it is refused.
_USED_BY: dict[str, tuple[str, ...]] = {
    "weighting": ("weighted_sampler", "loss_weights"),
    "beta": ("weighted_sampler", "loss_weights"),
    "class_weights": ("weighted_sampler", "loss_weights"),
    "classes_per_batch": ("balanced_batches",),
    "target_ratio": ("oversample", "undersample"),
    "epoch_length": SAMPLING,
    "replacement": ("weighted_sampler",),
}


@dataclass
class ImbalanceSettings:
    """How to counter class imbalance; checked on construction (see the module docstring).

    Args:
        strategy: One of ``none``, ``weighted_sampler``, ``balanced_batches``, ``loss_weights``,
            ``oversample``, ``undersample``.
        weighting: Class weights for ``weighted_sampler`` and ``loss_weights``: ``inverse``,
            ``inverse_sqrt`` or ``effective_number``.
        beta: ``effective_number``'s beta in [0, 1).
        class_weights: Explicit per-class weights instead of ``weighting`` (non-negative, finite,
            not all zero; one per class).
        classes_per_batch: P for ``balanced_batches`` (``None``: every class in every batch).
        target_ratio: Largest / smallest class count after ``oversample`` / ``undersample`` (>= 1).
        epoch_length: Samples per epoch for sampling strategies (``None``: the training set's size).
        replacement: ``weighted_sampler`` draws with replacement (without: at most once per epoch).
    """

    strategy: str = "none"
    weighting: str = "inverse"
    beta: float = 0.999
    class_weights: list[float] | None = None
    classes_per_batch: int | None = None
    target_ratio: float = 1.0
    epoch_length: int | None = None
    replacement: bool = True

    def __post_init__(self) -> None:
        check_bool("replacement", self.replacement)
        if self.strategy not in STRATEGIES:
            raise ConfigError("strategy", self.strategy, f"must be one of {list(STRATEGIES)}")
        if self.weighting not in WEIGHTINGS:
            raise ConfigError("weighting", self.weighting, f"must be one of {list(WEIGHTINGS)}")
        if not 0.0 <= self.beta < 1.0:
            raise ConfigError("beta", self.beta, "must be in [0, 1) (Cui et al. use 0.9-0.9999)")
        if self.class_weights is not None:
            check_weights(self.class_weights, "class_weights")
        if self.classes_per_batch is not None and self.classes_per_batch < 1:
            raise ConfigError("classes_per_batch", self.classes_per_batch, "must be >= 1 or null (all classes)")
        if not self.target_ratio >= 1.0:
            raise ConfigError("target_ratio", self.target_ratio, "must be >= 1 (largest / smallest class count)")
        if self.epoch_length is not None and self.epoch_length < 1:
            raise ConfigError("epoch_length", self.epoch_length, "must be >= 1 or null (the training set's size)")
        defaults = ImbalanceSettings.__dataclass_fields__
        for key, users in _USED_BY.items():
            value = getattr(self, key)
            if self.strategy not in users and value != defaults[key].default:
                raise ConfigError(
                    key, value,
                    f"is not used by strategy={self.strategy!r} (only by {', '.join(users)}): set one of those, "
                    "or leave it unset",
                )  # fmt: skip

    @property
    def samples(self) -> bool:
        """Whether the strategy replaces the training sampler."""
        return self.strategy in SAMPLING


def as_imbalance_settings(value: ImbalanceSettings | Mapping[str, Any] | None) -> ImbalanceSettings:
    if value is None:
        return ImbalanceSettings()
    if isinstance(value, ImbalanceSettings):
        return value
    return ImbalanceSettings(**{str(k): v for k, v in value.items() if k != "_target_"})


def check_weights(weights: Sequence[float] | np.ndarray, key: str) -> np.ndarray:
    """Weights as float64, or a :class:`ConfigError` for negative, NaN/inf or all-zero values."""
    array = np.asarray(weights, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ConfigError(key, list(array.ravel()), "must be a non-empty list of numbers")
    if not np.isfinite(array).all():
        raise ConfigError(key, array.tolist(), "holds NaN or infinite values")
    if (array < 0).any():
        raise ConfigError(key, array.tolist(), f"holds negative values (at class {int(np.argmax(array < 0))})")
    if not array.any():
        raise ConfigError(key, array.tolist(), "is all zero: no sample could ever be drawn")
    return array


def class_weights(counts: np.ndarray, settings: ImbalanceSettings, class_names: Sequence[str] = ()) -> np.ndarray:
    """Per-class weights from training counts, scaled so the count-weighted mean is 1.

    The scaling keeps the loss on the same scale as unweighted training.
    """
    counts = np.asarray(counts, dtype=np.float64)
    check_counts(counts, class_names)
    if settings.class_weights is not None:
        weights = check_weights(settings.class_weights, "class_weights")
        if len(weights) != len(counts):
            raise ConfigError("class_weights", weights.tolist(), f"needs one weight per class ({len(counts)})")
    elif settings.weighting == "inverse":
        weights = 1.0 / counts
    elif settings.weighting == "inverse_sqrt":
        weights = 1.0 / np.sqrt(counts)
    else:
        weights = (1.0 - settings.beta) / (1.0 - settings.beta**counts)
    return weights * counts.sum() / (weights * counts).sum()


def check_counts(counts: np.ndarray, class_names: Sequence[str] = ()) -> None:
    empty = np.flatnonzero(np.asarray(counts) == 0)
    if empty.size:
        names = [class_names[int(i)] if i < len(class_names) else str(i) for i in empty]
        raise DataError(
            f"Class {names[0]!r} has no training samples ({len(names)} such classes: {names[:5]}); imbalance "
            "strategies need every class in the training split. Remove the class or add samples."
        )
