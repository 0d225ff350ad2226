"""Collate functions; errors in them name the samples at fault instead of torch's internals."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import default_collate

from chute.errors import DataError


def collate_images(batch: list[Any]) -> Any:
    """``default_collate`` that explains mismatched image sizes (the usual cause: no resize step)."""
    try:
        return default_collate(batch)
    except RuntimeError as err:
        if "stack expects each tensor to be equal size" not in str(err):
            raise
        shapes = sorted({tuple(s[0].shape) for s in batch if isinstance(s[0], torch.Tensor)})
        raise DataError(
            f"Images in one batch have different shapes {shapes[:4]}: give the DataModule transforms that "
            "resize to a fixed size, e.g. create_transforms(image_size=224)."
        ) from err
