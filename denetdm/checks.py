"""Value checks shared by the config, the datasets and the methods: each failure is one ConfigError naming the key."""

import math
import os
from pathlib import Path

from denetdm.errors import ConfigError, DataError


def positive_int(key: str, value: object, allow_none: bool = False) -> int | None:
    """An integer >= 1 (or None where allowed)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        extra = " (or null)" if allow_none else ""
        raise ConfigError(f"{key} must be a positive integer{extra}, got {value!r}")
    return value


def flag(key: str, value: object) -> bool:
    """true or false."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value


def path_text(key: str, value: object, allow_none: bool = False) -> str | None:
    """A path typed as text (or None where allowed): a number or a list where a path belongs is one error."""
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key} must be a path{' (or null)' if allow_none else ''}, got {value!r}")
    return value


def number(key: str, value: object, low: float = 0.0, strict: bool = False, high: float | None = None) -> float:
    """A finite number >= low (> low when strict), and <= high when given."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low) and (high is None or value <= high)
    if not ok:
        bound = f"{'>' if strict else '>='} {low:g}" + ("" if high is None else f" and <= {high:g}")
        raise ConfigError(f"{key} must be a number {bound}, got {value!r}")
    return float(value)


def image_size(value: object) -> int:
    """`dataset.image_size`: the square size images are cached at, an integer >= 8."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 8:
        raise ConfigError(f"dataset.image_size must be an integer >= 8, got {value!r}")
    return value


def images_fit(n_images: int, size: int) -> None:
    """The decoded images (n x 3 x size x size bytes) fit in the memory free now: else one error line, before a
    multi-terabyte allocation ends in torch's or PIL's traceback."""
    need = n_images * 3 * size * size
    if need > (free := available_memory()):
        raise DataError(
            f"dataset.image_size={size}: {n_images} decoded images need {need / 1e9:.1f} GB, more than the "
            f"{free / 1e9:.1f} GB of memory free; lower dataset.image_size"
        )


def available_memory() -> int:
    """Bytes of memory available now (Linux: MemAvailable), or the machine's total where that is unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def instantiate_checked(node, **kwargs):
    """hydra.utils.instantiate, with our own errors unwrapped and a bad argument named in one line."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from denetdm.errors import ConfigError, DenetdmError

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, DenetdmError):
            raise cause from None
        target = node.get("_target_", "?") if hasattr(node, "get") else "?"
        raise ConfigError(f"cannot build {target}: {cause or e}".replace("\n", " ")) from None
