"""Collate functions; errors in them name the samples and fields at fault instead of torch's internals.

Every DataModule takes ``collate_fn``: a callable or the dotted path of one (``"mypkg.collate.fn"``),
so a Hydra config can point at any function without ``_partial_`` tricks.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import default_collate

from chute.errors import ConfigError, DataError

Collate = Callable[[Any], Any]


def collate_images(batch: list[Any] | tuple[Any, ...]) -> Any:
    """``default_collate`` that explains mismatched image sizes (the usual cause: no resize step).

    A tuple is a batch the dataset already gathered whole (``__getitems__``): it passes through.
    """
    if isinstance(batch, tuple):
        return batch
    # Checked first: in a worker process torch stacks into shared memory sized from the first
    # image, and a larger one fails there with "Trying to resize storage that is not resizable".
    shapes = sorted(
        {tuple(s[0].shape) for s in batch if isinstance(s, tuple | list) and isinstance(s[0], torch.Tensor)}
    )
    if len(shapes) > 1:
        raise DataError(
            f"Images in one batch have different shapes {shapes[:4]}: give the DataModule transforms that "
            "resize to a fixed size, e.g. create_transforms(image_size=224)."
        )
    return default_collate(batch)


def collate_nested(batch: Sequence[Any], pad_value: int | float = 0) -> Any:
    """Collate samples that are (nested) dicts, tuples, tensors, arrays and numbers.

    Tensors of one field that differ in their first dimension (variable-length fields) are padded to
    the longest with ``pad_value``; in a dict, their lengths are added as ``"<field>_lengths"``. A
    field that is ``None`` in any sample is an error naming the field: a batch never holds ``None``.

    Example:
        >>> batch = collate_nested([{"x": torch.tensor([1, 2, 3]), "y": 0}, {"x": torch.tensor([4]), "y": 1}])
        >>> batch["x"].tolist(), batch["x_lengths"].tolist(), batch["y"].tolist()
        ([[1, 2, 3], [4, 0, 0]], [3, 1], [0, 1])
    """
    if not batch:
        raise DataError("collate_nested got an empty batch.")
    return _collate(list(batch), "sample", pad_value)


def _collate(values: list[Any], where: str, pad_value: int | float) -> Any:
    first = values[0]
    missing = [i for i, v in enumerate(values) if v is None]
    if missing:
        raise DataError(
            f"{where} is None in {len(missing)} of {len(values)} samples (first: batch position {missing[0]}); "
            "batches cannot hold None: drop the field, fill it, or skip such samples in the dataset."
        )
    if isinstance(first, Mapping):
        keys = list(first)
        out: dict[str, Any] = {}
        for key in keys:
            if any(key not in v for v in values):
                raise DataError(f"{where}: key {key!r} is missing from some samples of the batch.")
            field_values = [v[key] for v in values]
            out[key] = _collate(field_values, f"field {key!r}", pad_value)
            lengths = _lengths(field_values)
            if lengths is not None:
                out[f"{key}_lengths"] = lengths
        return out
    if isinstance(first, tuple | list) and not isinstance(first, str):
        if any(len(v) != len(first) for v in values):
            raise DataError(f"{where}: samples have different numbers of elements.")
        return type(first)(_collate([v[i] for v in values], f"{where}[{i}]", pad_value) for i in range(len(first)))
    if isinstance(first, torch.Tensor) and first.dim() > 0 and _lengths(values) is not None:
        return pad_stack(values, pad_value)
    if _small_stack(values):
        # In a worker default_collate stacks into a new shared-memory file, which then crosses to the
        # main process at ~0.8 ms a tensor; a small batch in plain memory crosses inside the message
        # (chute.loader.buffers.INLINE_BYTES), several times faster.
        return torch.stack(values)
    try:
        return default_collate(values)
    except (RuntimeError, TypeError) as err:
        raise DataError(f"Cannot collate {where}: {err}") from err


def _small_stack(values: list[Any]) -> bool:
    """Whether ``values`` are plain tensors of one shape and dtype whose stack is small enough to
    cross from a worker inside the message (:data:`chute.loader.buffers.INLINE_BYTES`)."""
    from chute.loader.buffers import INLINE_BYTES

    first = values[0]
    if type(first) is not torch.Tensor:
        return False
    if any(type(v) is not torch.Tensor or v.shape != first.shape or v.dtype != first.dtype for v in values):
        return False
    return len(values) * first.numel() * first.element_size() <= INLINE_BYTES


def _lengths(values: list[Any]) -> torch.Tensor | None:
    """Lengths along dim 0 when ``values`` are tensors that differ only there, else ``None``."""
    if not all(isinstance(v, torch.Tensor) and v.dim() > 0 for v in values):
        return None
    sizes = [v.shape[0] for v in values]
    if len(set(sizes)) == 1:
        return None
    return torch.tensor(sizes, dtype=torch.int64)


def pad_stack(tensors: Sequence[torch.Tensor], pad_value: int | float = 0) -> torch.Tensor:
    """Stack tensors that differ in their first dimension, padding at the end to the longest."""
    trailing = {tuple(t.shape[1:]) for t in tensors}
    if len(trailing) > 1:
        raise DataError(f"Variable-length tensors must agree after the first dimension, got {sorted(trailing)}.")
    longest = max(t.shape[0] for t in tensors)
    out = tensors[0].new_full((len(tensors), longest, *tensors[0].shape[1:]), pad_value)
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
    return out


def samples_in(batch: Any) -> int:
    """Number of samples in a collated batch: the length of its inputs (element 0 of a tuple, the
    ``"inputs"`` entry or else the first value of a dict, looked into recursively); 0 if unsized."""
    while isinstance(batch, (tuple, list, dict)) and batch:
        batch = batch[0] if not isinstance(batch, dict) else batch.get("inputs", next(iter(batch.values())))
    return len(batch) if hasattr(batch, "__len__") else 0


def passthrough(batch: Any) -> Any:
    """Collate for datasets that build whole batches themselves (``__getitems__``): return as is."""
    return batch


def resolve_collate(collate_fn: Collate | str | None, default: Collate) -> Collate:
    """``collate_fn`` itself, the function its dotted path names, or ``default`` when ``None``."""
    if collate_fn is None:
        return default
    if callable(collate_fn):
        return collate_fn
    if not isinstance(collate_fn, str) or "." not in collate_fn:
        raise ConfigError("collate_fn", collate_fn, "must be a callable or a dotted path like 'mypkg.module.function'")
    module_name, _, attr = collate_fn.rpartition(".")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError("collate_fn", collate_fn, f"cannot be imported ({err})") from None
    if not callable(target):
        raise ConfigError("collate_fn", collate_fn, "names something that is not callable")
    return target
