"""The class-imbalance strategies' draws (:mod:`chute.imbalance` holds their settings), and the
choice among them.

Each is a :class:`~chute.loader.orders.DistributedDraw`: one draw per ``(seed, epoch)``, the same on
every rank, split across ranks like every chute order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from chute.errors import ConfigError
from chute.imbalance import ImbalanceSettings, check_counts, check_weights, class_weights
from chute.loader.orders import DistributedDraw

__all__ = ["BalancedBatchDraw", "ResampleDraw", "WeightedDraw", "build_sampler"]


def build_sampler(
    settings: ImbalanceSettings,
    labels: np.ndarray,
    num_classes: int,
    batch_size: int,
    *,
    seed: int,
    class_names: Sequence[str] = (),
    rank: int | None = None,
    world_size: int | None = None,
) -> tuple[DistributedDraw | None, bool]:
    """The training sampler for ``settings`` and whether it yields whole batches (``None`` for no sampler)."""
    if not settings.samples:
        return None, False
    counts = np.bincount(labels, minlength=num_classes)
    check_counts(counts, class_names)
    length = settings.epoch_length or len(labels)
    common = {"seed": seed, "rank": rank, "world_size": world_size}
    if settings.strategy == "weighted_sampler":
        weights = class_weights(counts, settings, class_names)[labels]
        if not settings.replacement and length > len(labels):
            raise ConfigError("epoch_length", length, f"exceeds the {len(labels)} samples drawn without replacement")
        return WeightedDraw(weights, length, replacement=settings.replacement, **common), False
    if settings.strategy == "balanced_batches":
        per_batch = settings.classes_per_batch or num_classes
        if per_batch > num_classes:
            raise ConfigError("classes_per_batch", per_batch, f"exceeds the {num_classes} classes")
        if batch_size % per_batch or batch_size < per_batch:
            raise ConfigError(
                "classes_per_batch", per_batch,
                f"batch_size {batch_size} must be a multiple of the {per_batch} classes per batch (P x K); "
                f"e.g. batch_size {max(1, batch_size // per_batch) * per_batch} or classes_per_batch dividing it",
            )  # fmt: skip
        batches = max(1, length // batch_size)
        return BalancedBatchDraw(labels, per_batch, batch_size // per_batch, batches, **common), True
    return ResampleDraw(labels, num_classes, settings.strategy, settings.target_ratio, length, **common), False


class WeightedDraw(DistributedDraw):
    """``num_samples`` indices drawn with probability proportional to ``weights`` (seeded per epoch)."""

    def __init__(self, weights: np.ndarray, num_samples: int, *, replacement: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.weights = torch.as_tensor(check_weights(weights, "weights"), dtype=torch.float64)
        self.num_samples = num_samples
        self.replacement = replacement

    def draw(self, generator: torch.Generator) -> np.ndarray:
        picks = torch.multinomial(self.weights, self.num_samples, self.replacement, generator=generator)
        return picks.numpy()


class ResampleDraw(DistributedDraw):
    """Over- or undersample each class to within ``target_ratio`` of the others, shuffle, fit to ``length``."""

    def __init__(
        self, labels: np.ndarray, num_classes: int, mode: str, target_ratio: float, length: int, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.members = [np.flatnonzero(labels == c) for c in range(num_classes)]
        counts = np.array([len(m) for m in self.members])
        if mode == "oversample":
            self.targets = np.maximum(counts, math.ceil(counts.max() / target_ratio))
        else:
            self.targets = np.minimum(counts, math.floor(counts.min() * target_ratio))
        self.length = length

    def draw(self, generator: torch.Generator) -> np.ndarray:
        rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
        parts = []
        for members, target in zip(self.members, self.targets, strict=True):
            repeats = np.tile(rng.permutation(members), target // len(members))
            parts.append(np.concatenate([repeats, rng.choice(members, target % len(members), replace=False)]))
        pool = rng.permutation(np.concatenate(parts))
        reps = -(-self.length // len(pool))  # cycle (reshuffled) to the epoch length
        return np.concatenate([pool] + [rng.permutation(pool) for _ in range(reps - 1)])[: self.length]


class BalancedBatchDraw(DistributedDraw):
    """Batches of ``classes`` classes x ``per_class`` samples; each class cycles through its samples."""

    def __init__(self, labels: np.ndarray, classes: int, per_class: int, num_batches: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.members = [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]
        self.classes = classes
        self.per_class = per_class
        self.num_batches = num_batches

    def draw(self, generator: torch.Generator) -> np.ndarray:
        rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
        streams = [_Cycle(m, rng) for m in self.members]
        batches = np.empty((self.num_batches, self.classes * self.per_class), dtype=np.int64)
        for b in range(self.num_batches):
            chosen = rng.choice(len(streams), self.classes, replace=False)
            batches[b] = np.concatenate([streams[c].take(self.per_class) for c in chosen])
        return batches


class _Cycle:
    """Endless reshuffled passes over one class's samples."""

    def __init__(self, members: np.ndarray, rng: np.random.Generator) -> None:
        self.members, self.rng = members, rng
        self.order, self.pos = rng.permutation(members), 0

    def take(self, k: int) -> np.ndarray:
        out = []
        while k > 0:
            if self.pos == len(self.order):
                self.order, self.pos = self.rng.permutation(self.members), 0
            n = min(k, len(self.order) - self.pos)
            out.append(self.order[self.pos : self.pos + n])
            self.pos, k = self.pos + n, k - n
        return np.concatenate(out)
