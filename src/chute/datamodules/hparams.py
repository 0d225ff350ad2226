"""A DataModule's constructor arguments: which it takes (the Hydra schema's keys), and their values
as plain hyperparameters, so checkpoints load with ``weights_only=True``."""

from __future__ import annotations

import inspect
import os
import typing
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


def init_parameters(cls: type, base: type) -> dict[str, tuple[inspect.Parameter, Any]]:
    """Every argument ``cls``'s constructor takes by name, with its type: its own, then, when it takes
    ``**common: Unpack[CommonArgs]``, those of ``base``'s constructor, or when it takes other
    ``**options``, those of its parent's (a subclass that adds a few arguments and passes the rest
    on); less the keys ``cls.unsupported`` names."""
    own = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
    hints = typing.get_type_hints(cls.__init__)  # type: ignore[misc]
    found = {
        p.name: (p, hints.get(p.name, Any))
        for p in list(own.values())[1:]
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    rest = next((p for p in own.values() if p.kind is p.VAR_KEYWORD), None)
    if cls is not base and rest is not None:
        common = "CommonArgs" in str(hints.get(rest.name, ""))
        parent = base if common else next(c for c in cls.__mro__[1:] if "__init__" in vars(c))
        for name, entry in init_parameters(parent, base).items():
            found.setdefault(name, entry)
    unsupported = getattr(cls, "unsupported", {})
    return {name: entry for name, entry in found.items() if name not in unsupported}


def caller_arguments() -> dict[str, Any]:
    """The named arguments (``self`` and ``**kwargs`` aside) of the ``__init__`` that called the caller
    of this function, as they are now."""
    frame = inspect.currentframe()
    caller = frame.f_back.f_back if frame is not None and frame.f_back is not None else None
    if caller is None:
        return {}
    code = caller.f_code
    names = code.co_varnames[1 : code.co_argcount + code.co_kwonlyargcount]
    return {name: caller.f_locals[name] for name in names if name in caller.f_locals}
