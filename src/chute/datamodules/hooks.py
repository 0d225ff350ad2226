"""Where a DataModule's batch hook runs, and the collate-then-hook a loader runs in its stead.

A chute DataModule's batch hook (``batch_decode``, ``batch_transform``, ``train_batch_transform``)
runs after the batch reaches the trainer's device (Lightning's ``on_after_batch_transfer``), unless
the loader already ran it: on a CPU trainer inside the loader's workers or threads, on a GPU
trainer right after the loader's side-stream copy (``ChuteDataModule._hook_in_loader`` and
``_hook_after_copy`` decide). :class:`InLoader` records which stages the loader took, so the hook
runs each stage exactly once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch


class InLoader(NamedTuple):
    """The batch hook's stages a loader runs itself: ``normalized`` (decode + ``batch_transform``)
    and ``augmented`` (``train_batch_transform``); ``InLoader()``: none."""

    normalized: bool = False
    augmented: bool = False


class LoaderHook:
    """A collate function (or none) followed by the batch hook's transforms, run in the loader."""

    def __init__(
        self,
        collate_fn: Callable[[Any], Any] | None,
        batch_transform: Callable[[Any], Any] | None,
        train_batch_transform: Callable[[Any], Any] | None,
        decode: Callable[[Any], Any] | None = None,
    ) -> None:
        self.collate_fn = collate_fn
        self.batch_transform = batch_transform
        self.train_batch_transform = train_batch_transform
        self.decode = decode

    def __call__(self, samples: Any) -> Any:
        batch = self.collate_fn(samples) if self.collate_fn is not None else samples
        if batch is None:  # every sample of it was bad (drop_bad): the loader skips it
            return None
        if self.decode is not None:
            batch = self.decode(batch)
        if getattr(self.train_batch_transform, "takes_uint8", False) and on_cpu(batch):
            # crop the uint8 batch on the CPU (fewer pixels to normalize), then normalize
            batch = apply_to_inputs(self.train_batch_transform, batch)
            return apply_to_inputs(self.batch_transform, batch)
        batch = apply_to_inputs(self.batch_transform, batch)
        return apply_to_inputs(self.train_batch_transform, batch)


def on_cpu(batch: Any) -> bool:
    """Whether the batch's inputs (see ``_apply_to_inputs``) are on the CPU."""
    inputs = batch
    if isinstance(batch, (tuple, list)) and batch:
        inputs = batch[0]
    elif isinstance(batch, dict) and "inputs" in batch:
        inputs = batch["inputs"]
    return not isinstance(inputs, torch.Tensor) or inputs.device.type == "cpu"


def apply_to_inputs(transform: Callable[[Any], Any] | None, batch: Any) -> Any:
    """``transform`` on the inputs: element 0 of a tuple batch, ``"inputs"`` of a dict, or the batch."""
    if transform is None:
        return batch
    if isinstance(batch, (tuple, list)) and batch:
        return type(batch)([transform(batch[0]), *batch[1:]])
    if isinstance(batch, dict) and "inputs" in batch:
        return {**batch, "inputs": transform(batch["inputs"])}
    return transform(batch)
