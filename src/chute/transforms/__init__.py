"""Per-sample pipelines (CPU, uint8) and per-batch device-side operations.

:class:`TransformSettings` loads at once (no torch); the rest on first use (see :mod:`chute._lazy`).
"""

from typing import TYPE_CHECKING

from chute._lazy import lazy_exports
from chute.transforms.settings import TransformSettings

if TYPE_CHECKING:
    from chute.transforms.batch import NormalizeBatch
    from chute.transforms.checks import check_deterministic
    from chute.transforms.factory import Pipeline, Transforms, create_transforms
    from chute.transforms.resize import OnFirst, SquareResize

__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "NormalizeBatch": "chute.transforms.batch",
        "check_deterministic": "chute.transforms.checks",
        "Pipeline": "chute.transforms.factory",
        "Transforms": "chute.transforms.factory",
        "create_transforms": "chute.transforms.factory",
        "OnFirst": "chute.transforms.resize",
        "SquareResize": "chute.transforms.resize",
    },
)

__all__ = [
    "NormalizeBatch",
    "OnFirst",
    "Pipeline",
    "SquareResize",
    "TransformSettings",
    "Transforms",
    "check_deterministic",
    "create_transforms",
]
