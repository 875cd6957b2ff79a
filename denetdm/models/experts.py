"""The stage-1 product of experts and the stage-2 target model (docs/protocols.md §1)."""

import torch
import torch.nn as nn

from denetdm.models.registry import create_backbone


def build_backbone(spec: dict, input_shape: tuple[int, ...]) -> nn.Module:
    """Build a backbone from a spec {"name": ..., **kwargs} (a model.* config node)."""
    spec = dict(spec)
    return create_backbone(spec.pop("name"), input_shape, **spec)


class Projection(nn.Module):
    """Identity when widths agree, else a Linear map to the shared feature width."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.proj = nn.Identity() if in_features == out_features else nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class TwoExpertModel(nn.Module):
    """Deep (bias) and shallow (core) extractors with ONE shared linear head on their summed features.

    Because the head is linear, f(phi_deep + phi_shallow) is a product of experts: its logits are the sum
    of the experts' logits f(phi_deep), f(phi_shallow) (minus one bias term), each read out alone.
    """

    def __init__(self, deep: nn.Module, shallow: nn.Module, num_classes: int) -> None:
        super().__init__()
        width = max(deep.num_features, shallow.num_features)
        self.deep, self.shallow = deep, shallow
        self.deep_proj = Projection(deep.num_features, width)
        self.shallow_proj = Projection(shallow.num_features, width)
        self.head = nn.Linear(width, num_classes)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(deep features, shallow features) in the shared width."""
        return self.deep_proj(self.deep(x)), self.shallow_proj(self.shallow(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Product-of-experts logits f(phi_deep(x) + phi_shallow(x)), the training output."""
        fd, fs = self.features(x)
        return self.head(fd + fs)

    def experts(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of each expert alone (the other zeroed) and of their product."""
        fd, fs = self.features(x)
        return {"shallow": self.head(fs), "deep": self.head(fd), "poe": self.head(fd + fs)}


class TargetModel(nn.Module):
    """Stage 2: a fresh target extractor with a head initialised from the stage-1 head."""

    def __init__(self, extractor: nn.Module, stage1_head: nn.Linear) -> None:
        super().__init__()
        self.extractor = extractor
        self.proj = Projection(extractor.num_features, stage1_head.in_features)
        self.head = nn.Linear(stage1_head.in_features, stage1_head.out_features)
        self.head.load_state_dict(stage1_head.state_dict())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Target features in the stage-1 feature width."""
        return self.proj(self.extractor(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The deliverable predictor f_t(phi_t(x))."""
        return self.head(self.features(x))


class Classifier(nn.Module):
    """One network: a feature extractor and a linear head (ERM and the baselines)."""

    def __init__(self, extractor: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.extractor = extractor
        self.head = nn.Linear(extractor.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits."""
        return self.head(self.extractor(x))
