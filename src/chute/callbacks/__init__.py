"""Callbacks: see the data, measure the pipeline."""

from chute.callbacks.preview import DataPreview, preview_figure
from chute.callbacks.throughput import Throughput

__all__ = ["DataPreview", "Throughput", "preview_figure"]
