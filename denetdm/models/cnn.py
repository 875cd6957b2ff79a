"""Plain CNN extractors with a configurable number of conv layers (the reference's shallow experts)."""

import torch
import torch.nn as nn

from denetdm.errors import ConfigError
from denetdm.models.registry import register_backbone


class PlainCNN(nn.Module):
    """depth x [Conv, BN, ReLU], max-pools after the first `pools` convs, then flatten or global average."""

    def __init__(
        self,
        in_channels: int,
        channels: list[int],
        kernel_size: int,
        padding: int,
        pools: int,
        global_pool: bool,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(c_in, c, kernel_size, padding=padding), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if i < pools:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        layers.append(nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity())
        layers.append(nn.Flatten())
        self.body = nn.Sequential(*layers)
        self.num_features = 0  # set by the factory from a dry run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _channels(depth: int, channels: list[int]) -> list[int]:
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ConfigError(f"cnn depth is the number of conv layers and must be an integer >= 1, got {depth!r}")
    return [channels[min(i, len(channels) - 1)] for i in range(depth)]  # extra layers repeat the last width


@register_backbone("cnn", convolutional=True)
def cnn(
    input_shape: tuple[int, ...],
    depth: int = 3,
    channels: list[int] | tuple[int, ...] = (32, 64, 64),
    kernel_size: int = 5,
    padding: int = 0,
    pools: int = 2,
    global_pool: bool = False,
) -> nn.Module:
    """Plain CNN; defaults are the reference's Corrupted CIFAR-10 shallow expert (3 conv 5x5, 32-64-64,
    2 max-pools, no padding: 32x32 -> 1x1x64, flattened to 64-d)."""
    model = PlainCNN(input_shape[0], _channels(depth, list(channels)), kernel_size, padding, pools, global_pool)
    with torch.no_grad():
        try:
            model.num_features = model.eval()(torch.zeros(1, *input_shape)).shape[1]
        except RuntimeError:
            raise ConfigError(
                f"cnn of depth {depth} (kernel {kernel_size}, padding {padding}, {pools} pools) shrinks "
                f"{tuple(input_shape[1:])} images to nothing; lower the depth or use padding"
            ) from None
    return model.train()


@register_backbone("cnn_bffhq", convolutional=True)
def cnn_bffhq(input_shape: tuple[int, ...], depth: int = 4, **kwargs) -> nn.Module:
    """The reference's BFFHQ shallow expert: 4 conv 3x3 (64-128-512-512) + BN + ReLU, pools, global average."""
    defaults = dict(channels=(64, 128, 512, 512), kernel_size=3, padding=1, pools=3, global_pool=True)
    return cnn(input_shape, depth=depth, **{**defaults, **kwargs})
