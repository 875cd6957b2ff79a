"""The backbone registry: one factory, one decorator, kwargs override a variant's defaults (timm style)."""

import math
from collections.abc import Callable

import torch
import torch.nn as nn

from denetdm.errors import ConfigError

_BACKBONES: dict[str, Callable[..., nn.Module]] = {}
_CONVOLUTIONAL: set[str] = set()


def register_backbone(name: str, convolutional: bool = False) -> Callable:
    """Register a function `fn(input_shape, **kwargs) -> nn.Module` whose module has `num_features`.

    `convolutional` backbones get channels-last image tensors (faster convolutions); others would only pay
    for a copy."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _BACKBONES[name] = fn
        if convolutional:
            _CONVOLUTIONAL.add(name)
        return fn

    return wrap


def is_convolutional(name: str) -> bool:
    """Whether the registered backbone `name` is convolutional (wants channels-last inputs)."""
    return isinstance(name, str) and name in _CONVOLUTIONAL


def list_backbones() -> list[str]:
    """Names of the registered backbones."""
    return sorted(_BACKBONES)


MAX_DEPTH = 2000  # layers (CIFAR's deepest ResNet has 1202); a loop of 2**31 layers never ends
MAX_PARAMETERS = 10**9  # 4 GB of float32 weights, 16 GB with Adam's state and the gradients


def create_backbone(name: str, input_shape: tuple[int, ...], **kwargs) -> nn.Module:
    """Build a registered feature extractor; it maps (N, *input_shape) to (N, num_features)."""
    if not isinstance(name, str) or name not in _BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {list_backbones()}")
    depth = kwargs.get("depth")
    if isinstance(depth, int) and depth > MAX_DEPTH:
        raise ConfigError(f"backbone {name!r}: depth must be at most {MAX_DEPTH}, got {depth}")
    if not kwargs.get("pretrained"):  # sized first on the meta device (no memory); pretrained ones load weights
        count = _parameter_count(name, input_shape, kwargs)
        if count > MAX_PARAMETERS:
            size = f"{count:,}" if math.isfinite(count) else "more than torch can index"
            raise ConfigError(
                f"backbone {name!r} with {kwargs} has {size} parameters (at most {MAX_PARAMETERS:,}); "
                "lower its width, channels or depth"
            )
    model = _build(name, input_shape, kwargs)
    assert isinstance(getattr(model, "num_features", None), int), f"backbone {name} must set num_features"
    return model


def _parameter_count(name: str, input_shape: tuple[int, ...], kwargs: dict) -> float:
    try:
        with torch.device("meta"):
            return sum(p.numel() for p in _build(name, input_shape, kwargs).parameters())
    except (RuntimeError, OverflowError):  # a tensor size past what torch can index
        return math.inf


def _build(name: str, input_shape: tuple[int, ...], kwargs: dict) -> nn.Module:
    try:
        return _BACKBONES[name](tuple(input_shape), **kwargs)
    except TypeError as e:
        if "Overflow" in str(e):  # torch's own message for a size past a 64-bit integer spans many lines
            raise ConfigError(f"backbone {name!r} with {kwargs}: a size past what torch can index; lower it") from None
        raise ConfigError(f"backbone {name!r}: {str(e).splitlines()[0]}") from None
