"""Per-sample pipelines (CPU, uint8) and per-batch device-side operations."""

from chute.transforms.batch import NormalizeBatch
from chute.transforms.checks import check_deterministic
from chute.transforms.factory import Pipeline, Transforms, TransformSettings, create_transforms

__all__ = ["NormalizeBatch", "Pipeline", "TransformSettings", "Transforms", "check_deterministic", "create_transforms"]
