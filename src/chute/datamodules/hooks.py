"""Where a DataModule's batch hook runs, and the collate-then-hook a loader runs in its stead.

A chute DataModule's batch hook (``batch_decode``, ``batch_transform``, ``train_batch_transform``)
runs after the batch reaches the trainer's device (Lightning's ``on_after_batch_transfer``), unless
the loader already ran it: on a CPU trainer inside the loader's workers or threads
(:func:`hook_in_collate`), on a GPU trainer right after the loader's side-stream copy
(:func:`hook_after_copy`). :class:`InLoader` records which stages the loader took, so
:func:`run_hook` (Lightning's hook) runs each stage exactly once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch.utils.data import default_collate, default_convert

if TYPE_CHECKING:
    from chute.datamodules.base import ChuteDataModule
    from chute.loader import LoaderSettings


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


def hook_in_collate(
    dm: ChuteDataModule, collate_fn: Callable[[Any], Any] | None, train: bool, device: Any, stream: bool
) -> Any:
    """On a CPU trainer, ``collate_fn`` followed by the batch hook's work, for the loader to run in
    parallel; else ``collate_fn`` as it is.

    With a GPU the hook (``uint8`` -> normalized float, device-side augmentation) runs on the
    device after the copy: a quarter of the bytes to move, one kernel per batch. With no GPU it
    would run serially in the training process between steps, so here it joins the collate
    step in the loader's workers or threads instead: ``batch_transform`` and
    ``train_batch_transform`` (chute's random batch transforms draw from the batch's own
    generator there, :func:`chute.loader.batch_generator`, so their draws do not depend on the
    backend). The pair transform (MixUp/CutMix) stays in the hook.
    """
    on_cpu = dm.hook_in_loader and device is not None and device.type == "cpu"
    if not on_cpu or not _has_hook(dm, train):
        dm._in_loader[train] = InLoader()
        return collate_fn
    augment = dm.train_batch_transform if train else None
    dm._in_loader[train] = InLoader(_normalizes(dm), augment is not None)
    plain = default_convert if stream else default_collate  # what build_loader uses without one
    return LoaderHook(collate_fn or plain, dm.batch_transform, augment, dm.batch_decode)


def hook_after_copy(
    dm: ChuteDataModule, train: bool, chosen: LoaderSettings, device: Any, stream: bool, record: bool
) -> LoaderHook | None:
    """On a GPU trainer with loader threads or worker processes, the batch hook's work for the
    loader to run on the device right after its side-stream copy: in each loader thread
    (``ThreadedLoader(after_copy=...)``), or in the one thread that feeds worker processes'
    batches to the device (:class:`~chute.loader.threaded.DeviceFeed`).

    Between training steps the hook costs the training thread its CPU-side work (drawing crop
    boxes, launching a handful of kernels: ~0.2-2 ms a batch, a large share of a small model's
    step; the GPU decode route's nvJPEG call and crops: several ms); in the loader it overlaps
    the step, and chute's random batch transforms draw from the batch's own generator there, as
    they do on a CPU trainer. ``record`` says this loader is the real one (not an autotune
    probe), whose choice the hook then follows.
    """
    augment = dm.train_batch_transform if train else None
    moves = dm.hook_in_loader and device is not None and not stream and chosen.num_workers != 0 and _has_hook(dm, train)
    # The random batch transforms draw from the batch's generator, keyed where the batch was read
    # (chute.loader.batch_generator): in a loader thread, the thread that runs this hook; a worker
    # process's key does not reach the feeding thread, so with workers they stay in the trainer's hook.
    if chosen.backend != "threads":
        augment = None
    if record and device is not None:  # a CPU trainer's choice is hook_in_collate's
        dm._in_loader[train] = InLoader(_normalizes(dm), augment is not None) if moves else InLoader()
    return LoaderHook(None, dm.batch_transform, augment, dm.batch_decode) if moves else None


def run_hook(dm: ChuteDataModule, batch: Any, training: bool) -> Any:
    """The batch hook on a batch on the device (Lightning's ``on_after_batch_transfer``): the stages
    the loader did not run, then, for training batches, the pair transform (MixUp/CutMix)."""
    normalized, augmented = dm._in_loader.get(training, InLoader())  # already done in the loader
    if not normalized:
        if dm.batch_decode is not None:
            batch = dm.batch_decode(batch)
        batch = apply_to_inputs(dm.batch_transform, batch)
    if not training:
        return batch
    if not augmented:
        batch = apply_to_inputs(dm.train_batch_transform, batch)
    if dm.train_pair_transform is not None and isinstance(batch, (tuple, list)) and len(batch) >= 2:
        inputs, targets = dm.train_pair_transform(batch[0], batch[1])
        batch = type(batch)([inputs, targets, *batch[2:]])
    return batch


def _normalizes(dm: ChuteDataModule) -> bool:
    """Whether the hook's first stage (``batch_decode``, then ``batch_transform``) does anything."""
    return dm.batch_transform is not None or dm.batch_decode is not None


def _has_hook(dm: ChuteDataModule, train: bool) -> bool:
    return _normalizes(dm) or (train and dm.train_batch_transform is not None)
