"""Callbacks: see the data, measure the pipeline."""

from chute.callbacks.class_histogram import ClassHistogram, histogram_figure
from chute.callbacks.curves import LearningCurves, curves_figure
from chute.callbacks.latest import LatestCheckpoint
from chute.callbacks.preview import DataPreview, preview_figure
from chute.callbacks.random_state import RandomState
from chute.callbacks.stall import StallMonitor
from chute.callbacks.throughput import Throughput

__all__ = [
    "ClassHistogram", "DataPreview", "LatestCheckpoint", "LearningCurves", "RandomState", "StallMonitor",
    "Throughput",
    "curves_figure", "histogram_figure", "preview_figure",
]  # fmt: skip
