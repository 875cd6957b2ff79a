"""Methods: small classes with update(batch) -> dict and predict(x) -> {head: logits}."""

from denetdm.methods.base import Method
from denetdm.methods.denetdm import DeNetDMStage1, DeNetDMStage2

__all__ = ["DeNetDMStage1", "DeNetDMStage2", "Method"]
