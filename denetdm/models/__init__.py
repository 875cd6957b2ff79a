"""Backbones (registered by name) and the expert models built from them."""

from denetdm.models import mlp  # noqa: F401  (registers the backbone)
from denetdm.models.experts import TargetModel, TwoExpertModel, build_backbone
from denetdm.models.registry import create_backbone, list_backbones, register_backbone

__all__ = ["TargetModel", "TwoExpertModel", "build_backbone", "create_backbone", "list_backbones", "register_backbone"]
