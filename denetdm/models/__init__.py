"""Backbones (registered by name) and the expert models built from them."""

from denetdm.models import cnn, mlp, resnet_cifar, resnet_imagenet  # noqa: F401  (they register backbones)
from denetdm.models.experts import Classifier, TargetModel, TwoExpertModel, build_backbone
from denetdm.models.registry import create_backbone, is_convolutional, list_backbones, register_backbone

__all__ = [
    "Classifier",
    "TargetModel",
    "TwoExpertModel",
    "build_backbone",
    "create_backbone",
    "is_convolutional",
    "list_backbones",
    "register_backbone",
]
