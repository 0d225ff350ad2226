"""A DataModule's hyperparameters as plain values, so checkpoints load with ``weights_only=True``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

NOT_PLAIN = object()


def plain_values(received: Mapping[str, Any]) -> dict[str, Any]:
    """``received`` with every value as plain data; values that are not (callables, objects) and
    ``None`` (defaults meaning "infer from the data") are left out."""
    values = {k: plain(v) for k, v in received.items()}
    return {k: v for k, v in values.items() if v is not None and v is not NOT_PLAIN}


def plain(value: Any) -> Any:
    """``value`` as plain data (str, numbers, lists, dicts), or ``NOT_PLAIN``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        items = {str(k): plain(v) for k, v in value.items()}
        return NOT_PLAIN if any(v is NOT_PLAIN for v in items.values()) else items
    if isinstance(value, (list, tuple)):
        listed = [plain(v) for v in value]
        return NOT_PLAIN if any(v is NOT_PLAIN for v in listed) else listed
    return NOT_PLAIN


def qualname(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
