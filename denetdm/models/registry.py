"""The backbone registry: one factory, one decorator, kwargs override a variant's defaults (timm style)."""

from collections.abc import Callable

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


def create_backbone(name: str, input_shape: tuple[int, ...], **kwargs) -> nn.Module:
    """Build a registered feature extractor; it maps (N, *input_shape) to (N, num_features)."""
    if not isinstance(name, str) or name not in _BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {list_backbones()}")
    try:
        model = _BACKBONES[name](tuple(input_shape), **kwargs)
    except TypeError as e:
        raise ConfigError(f"backbone {name!r}: {e}") from None
    assert isinstance(getattr(model, "num_features", None), int), f"backbone {name} must set num_features"
    return model
