"""Plain CNN extractors with a configurable number of conv layers (the reference's shallow experts)."""

import torch
import torch.nn as nn

from denetdm.errors import ConfigError
from denetdm.models.registry import register_backbone

# A conv layer: (kernel size, output channels, pool), pool one of "" (none), "after" (Conv, BN, ReLU, MaxPool)
# or "before_bn" (Conv, MaxPool, BN, ReLU: the reference BFFHQ expert's third layer).
ConvSpec = tuple[int, int, str]


class PlainCNN(nn.Module):
    """Conv layers of `specs` with BN and ReLU, each followed or split by a 2x2 max-pool, then flatten or
    global average."""

    def __init__(self, in_channels: int, specs: list[ConvSpec], padding: int, global_pool: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for kernel, c, pool in specs:
            layers.append(nn.Conv2d(c_in, c, kernel, padding=padding))
            if pool == "before_bn":
                layers.append(nn.MaxPool2d(2))
            layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if pool == "after":
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
    specs = [(kernel_size, c, "after" if i < pools else "") for i, c in enumerate(_channels(depth, list(channels)))]
    return _dry_run(PlainCNN(input_shape[0], specs, padding, global_pool), input_shape, depth)


def _dry_run(model: PlainCNN, input_shape: tuple[int, ...], depth: int) -> PlainCNN:
    """Set num_features from one zero image; a clear error when the layers shrink it to nothing."""
    with torch.no_grad():
        try:
            model.num_features = model.eval()(torch.zeros(1, *input_shape)).shape[1]
        except RuntimeError:
            raise ConfigError(
                f"a CNN of depth {depth} shrinks {tuple(input_shape[1:])} images to nothing; lower the depth, "
                "use padding or larger images (dataset.image_size, where the dataset has one)"
            ) from None
    return model.train()


# The reference BFFHQ shallow expert (module/model.py), no padding: 7x7 conv to 64 then pool, 3x3 to 128 then
# pool, 3x3 to 512 with the pool BEFORE its batch norm, 3x3 to 512; global average (512-d). Deeper ones repeat
# the last layer.
BFFHQ_SPECS: list[ConvSpec] = [(7, 64, "after"), (3, 128, "after"), (3, 512, "before_bn"), (3, 512, "")]


@register_backbone("cnn_bffhq", convolutional=True)
def cnn_bffhq(input_shape: tuple[int, ...], depth: int = 4) -> nn.Module:
    """The reference's BFFHQ shallow expert at depth 4 (its first `depth` layers, or more 3x3 512 ones)."""
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ConfigError(f"cnn depth is the number of conv layers and must be an integer >= 1, got {depth!r}")
    specs = [BFFHQ_SPECS[min(i, len(BFFHQ_SPECS) - 1)] for i in range(depth)]
    return _dry_run(PlainCNN(input_shape[0], specs, padding=0, global_pool=True), input_shape, depth)
