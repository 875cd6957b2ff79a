"""Depth-parameterised MLP extractors, as in the Colored MNIST experiments of LfF and DeNetDM."""

import math

import torch.nn as nn

from denetdm.errors import ConfigError
from denetdm.models.registry import register_backbone


class MLP(nn.Sequential):
    """Flatten, then (depth - 1) x [Linear, ReLU]; the shared linear head is the depth-th layer."""

    def __init__(self, in_features: int, depth: int, width: int) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        for i in range(depth - 1):
            layers += [nn.Linear(in_features if i == 0 else width, width), nn.ReLU()]
        super().__init__(*layers)
        self.num_features = width


@register_backbone("mlp")
def mlp(input_shape: tuple[int, ...], depth: int = 5, width: int = 100) -> nn.Module:
    """MLP extractor whose `depth` counts Linear layers including the shared head (paper: deep 5, shallow 3)."""
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 2:
        raise ConfigError(
            f"mlp depth counts Linear layers including the head and must be an integer >= 2, got {depth!r}"
        )
    if not isinstance(width, int) or width < 1:
        raise ConfigError(f"mlp width must be a positive integer, got {width!r}")
    return MLP(math.prod(input_shape), depth, width)
