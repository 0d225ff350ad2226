"""The samplers' former home, kept so existing imports work: chute's orders live in
:mod:`chute.loader.orders` (and the class-imbalance draws in :mod:`chute.loader.draws`)."""

from chute.loader.draws import BalancedBatchDraw, ResampleDraw, WeightedDraw
from chute.loader.orders import BatchIndexSampler, BucketBatchSampler, DistributedDraw, EvalBatches, IndexSampler

__all__ = [
    "BalancedBatchDraw",
    "BatchIndexSampler",
    "BucketBatchSampler",
    "DistributedDraw",
    "EvalBatches",
    "IndexSampler",
    "ResampleDraw",
    "WeightedDraw",
]
