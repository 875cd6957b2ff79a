"""Search spaces for the Optuna sweeper that its yaml grammar cannot state (dependent parameters)."""

from collections.abc import Mapping
from typing import TYPE_CHECKING

from denetdm.errors import ConfigError

if TYPE_CHECKING:  # importing optuna costs seconds; sweep.py's plots only need depth_grid
    from optuna.trial import Trial


def depth_grid(node: Mapping, which: str) -> range:
    """The depths of a `search.<which>` node {low, high, step} (step 1 when absent)."""
    low, high, step = int(node["low"]), int(node["high"]), int(node.get("step", 1))
    if step < 1 or high < low:
        raise ConfigError(f"search.{which} needs low <= high and step >= 1, got {dict(node)}")
    return range(low, high + 1, step)


def depth_gap_space(cfg: Mapping, trial: "Trial") -> None:
    """Sample only legal pairs: a shallow depth from search.shallow that some deeper choice exceeds, then a deep
    depth from search.deep above it. Each range is {low, high, step} in its backbone's own depth units.
    `search.allow_equal: true` also allows deep == shallow: the paper's control without a depth gap."""
    shallow_grid, deep_grid = depth_grid(cfg.search.shallow, "shallow"), depth_grid(cfg.search.deep, "deep")
    equal = cfg.search.get("allow_equal", False)
    if not isinstance(equal, bool):
        raise ConfigError(f"search.allow_equal must be true or false, got {equal!r}")
    legal = [s for s in shallow_grid if s < deep_grid[-1] or (equal and s == deep_grid[-1])]
    if not legal:
        raise ConfigError(
            f"search.deep ({list(deep_grid)}) has no depth above any of search.shallow ({list(shallow_grid)})"
        )
    shallow = trial.suggest_int("model.shallow.depth", legal[0], legal[-1], step=shallow_grid.step)
    deeper = [d for d in deep_grid if d > shallow or (equal and d == shallow)]
    trial.suggest_int("model.deep.depth", deeper[0], deep_grid[-1], step=deep_grid.step)
