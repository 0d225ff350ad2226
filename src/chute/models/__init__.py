"""Small models that exercise the DataModules."""

from chute.models.backbones import BACKBONES, SmallCNN, create_backbone
from chute.models.classifier import ImageClassifier
from chute.models.multitask import MultiTaskModel
from chute.models.sequence import SequenceClassifier
from chute.models.tabular import TabularModel, mlp

__all__ = [
    "BACKBONES",
    "ImageClassifier",
    "MultiTaskModel",
    "SequenceClassifier",
    "SmallCNN",
    "TabularModel",
    "create_backbone",
    "mlp",
]
