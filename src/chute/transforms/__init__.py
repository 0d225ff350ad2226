"""Per-sample pipelines (CPU, uint8) and per-batch device-side operations."""

from chute.transforms.batch import NormalizeBatch
from chute.transforms.checks import check_deterministic
from chute.transforms.factory import Pipeline, Transforms, TransformSettings, create_transforms
from chute.transforms.resize import OnFirst, SquareResize

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
