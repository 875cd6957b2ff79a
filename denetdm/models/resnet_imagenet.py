"""ImageNet ResNets (torchvision) as extractors, optionally with pretrained weights."""

import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn as nn

from denetdm.errors import ConfigError
from denetdm.models.registry import register_backbone

_DEPTHS = {18: "resnet18", 34: "resnet34", 50: "resnet50"}


def _weights(arch: str):
    import torchvision

    return torchvision.models.get_model_weights(arch).IMAGENET1K_V1


def check_pretrained_available(arch: str) -> None:
    """Fail at once, in one line, when the weights are neither cached nor downloadable."""
    url = _weights(arch).url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    if cached.exists():
        return
    host = urlparse(url).hostname
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        raise ConfigError(
            f"pretrained {arch} weights are not in {cached.parent} and {host} cannot be reached; copy "
            f"{cached.name} there (or set TORCH_HOME), or use pretrained=false"
        ) from None


class ResNetExtractor(nn.Module):
    """A torchvision ResNet without its classifier: global-average-pooled features."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.num_features = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register_backbone("resnet", convolutional=True)
def resnet(input_shape: tuple[int, ...], depth: int = 18, pretrained: bool = False) -> nn.Module:
    """ResNet-18/34/50 (torchvision); `pretrained` loads ImageNet weights (needs them cached or the network)."""
    import torchvision

    if depth not in _DEPTHS:
        raise ConfigError(f"resnet depth must be one of {sorted(_DEPTHS)}, got {depth!r}")
    arch = _DEPTHS[depth]
    if pretrained:
        check_pretrained_available(arch)
    net = torchvision.models.get_model(arch, weights=_weights(arch) if pretrained else None)
    if input_shape[0] != 3:
        net.conv1 = nn.Conv2d(input_shape[0], 64, 7, 2, 3, bias=False)
    return ResNetExtractor(net)
