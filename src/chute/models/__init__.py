"""Small models that exercise the DataModules."""

from chute.models.backbones import BACKBONES, SmallCNN, create_backbone
from chute.models.classifier import ImageClassifier
from chute.models.multitask import MultiTaskModel
from chute.models.sequence import SequenceClassifier
from chute.models.tabular import TabularModel, mlp
from chute.models.video import ClipClassifier, R2Plus1D

# The registry: each model's Hydra schema (``schema/model/<name>``) is made from its constructor
# into chute/_schemas.py by ``python -m chute.config``.
MODELS: dict[str, type] = {
    "image_classifier": ImageClassifier,
    "tabular_model": TabularModel,
    "sequence_classifier": SequenceClassifier,
    "multitask_model": MultiTaskModel,
    "clip_classifier": ClipClassifier,
}

__all__ = [
    "BACKBONES",
    "MODELS",
    "ClipClassifier",
    "ImageClassifier",
    "MultiTaskModel",
    "R2Plus1D",
    "SequenceClassifier",
    "SmallCNN",
    "TabularModel",
    "create_backbone",
    "mlp",
]
