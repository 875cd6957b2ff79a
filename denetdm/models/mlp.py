"""Depth-parameterised MLP extractors, as in the Colored MNIST experiments of LfF and DeNetDM."""

import math

import torch
import torch.nn as nn

from denetdm.checks import number
from denetdm.errors import ConfigError
from denetdm.models.registry import register_backbone


class Scale(nn.Module):
    """Multiplies its input by a constant."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = float(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class MLP(nn.Sequential):
    """Flatten, then (depth - 1) x [Linear, ReLU]; the shared linear head is the depth-th layer."""

    def __init__(self, in_features: int, depth: int, width: int, input_scale: float = 1.0) -> None:
        # input_scale 1/255 reproduces the LfF reference MLP, whose inputs end up divided by 255 twice
        layers: list[nn.Module] = [nn.Flatten()] if input_scale == 1.0 else [Scale(input_scale), nn.Flatten()]
        for i in range(depth - 1):
            layers += [nn.Linear(in_features if i == 0 else width, width), nn.ReLU()]
        super().__init__(*layers)
        self.num_features = width if depth > 1 else in_features  # depth 1: the head alone, a linear model


@register_backbone("mlp")
def mlp(input_shape: tuple[int, ...], depth: int = 5, width: int = 100, input_scale: float = 1.0) -> nn.Module:
    """MLP extractor whose `depth` counts Linear layers including the shared head (paper: deep 5, shallow 3);
    `input_scale` multiplies its input first (1/255: the LfF reference's quirk, docs/protocols.md §8)."""
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ConfigError(
            f"mlp depth counts Linear layers including the head and must be an integer >= 1, got {depth!r}"
        )
    if not isinstance(width, int) or width < 1:
        raise ConfigError(f"mlp width must be a positive integer, got {width!r}")
    number("mlp input_scale", input_scale, strict=True)
    return MLP(math.prod(input_shape), depth, width, input_scale)
