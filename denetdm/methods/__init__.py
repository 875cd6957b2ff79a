"""Methods: small classes with update(batch) -> dict and predict(x) -> {head: logits}, one per phase."""

from denetdm.methods.base import BuildContext, Method
from denetdm.methods.denetdm import DeNetDMStage1, DeNetDMStage2
from denetdm.methods.dfa import DFA
from denetdm.methods.erm import ERM
from denetdm.methods.groupdro import GroupDRO
from denetdm.methods.jtt import JTT, JTTIdentify
from denetdm.methods.lc import LC
from denetdm.methods.lff import LfF

__all__ = [
    "DFA",
    "ERM",
    "JTT",
    "JTTIdentify",
    "LC",
    "BuildContext",
    "DeNetDMStage1",
    "DeNetDMStage2",
    "GroupDRO",
    "LfF",
    "Method",
]
