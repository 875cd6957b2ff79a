"""CIFAR ResNets of depth 6n+2 (He et al. 2016), as the reference's ResNet-20 deep expert."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from denetdm.errors import ConfigError
from denetdm.models.registry import register_backbone


class BasicBlock(nn.Module):
    """Two 3x3 convs; the shortcut subsamples and zero-pads channels (option A, no extra parameters)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride, self.pad = stride, c_out - c_in

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """conv 3x3 (16) + 3 stages of n blocks (16, 32, 64 channels) + global average: 64-d features."""

    def __init__(self, in_channels: int, n: int, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, c = [], width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                blocks.append(BasicBlock(c, c_out, 2 if stage > 0 and i == 0 else 1))
                c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.num_features = c
        # the reference's (and LfF's) ResNet-20 init: kaiming normal over fan_in (torch's default mode, gain
        # sqrt(2)); BatchNorm keeps torch's default
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1)


@register_backbone("resnet_cifar", convolutional=True)
def resnet_cifar(input_shape: tuple[int, ...], depth: int = 20, width: int = 16) -> nn.Module:
    """CIFAR ResNet of `depth` = 6n + 2 layers (8, 14, 20, 32, 44, 56, ...)."""
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ConfigError(f"resnet_cifar depth must be 6n+2 (8, 14, 20, 32, 44, 56, ...), got {depth!r}")
    return CifarResNet(input_shape[0], (depth - 2) // 6, width)
