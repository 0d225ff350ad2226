"""Small models that exercise the DataModules."""

from chute.models.backbones import BACKBONES, SmallCNN, create_backbone
from chute.models.classifier import ImageClassifier

__all__ = ["BACKBONES", "ImageClassifier", "SmallCNN", "create_backbone"]
