"""Package attributes imported on first use (PEP 562), so light modules load without torch.

``import chute.config`` (what ``train.py`` needs to compose and check a config) would otherwise
pull in torch, torchvision and Lightning through the packages' ``__init__`` files, seconds before
a mistyped setting could be reported. A package lists its public names and their modules::

    __getattr__, __dir__ = lazy_exports(globals(), {"ThreadedLoader": "chute.loader.threaded"})

and keeps ``if TYPE_CHECKING:`` imports of the same names for type checkers.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(
    namespace: dict[str, Any], exports: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for the package whose ``globals()`` is ``namespace``.

    Reading ``name`` imports ``exports[name]`` (a module path) and keeps the value in the package.
    """
    package = namespace["__name__"]

    def getattr_(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # later reads find it without coming here
        return value

    def dir_() -> list[str]:
        return sorted({*namespace, *exports})

    return getattr_, dir_
