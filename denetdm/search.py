"""Search spaces for the Optuna sweeper that its yaml grammar cannot state (dependent parameters)."""

from omegaconf import DictConfig
from optuna.trial import Trial

from denetdm.errors import ConfigError


def _grid(node: DictConfig, which: str) -> list[int]:
    low, high, step = int(node.low), int(node.high), int(node.get("step", 1))
    if step < 1 or high < low:
        raise ConfigError(f"search.{which} needs low <= high and step >= 1, got {dict(node)}")
    return list(range(low, high + 1, step))


def depth_gap_space(cfg: DictConfig, trial: Trial) -> None:
    """Sample only legal pairs: a shallow depth from search.shallow that some deeper choice exceeds, then a deep
    depth from search.deep above it. Each range is {low, high, step} in its backbone's own depth units."""
    shallow_grid, deep_grid = _grid(cfg.search.shallow, "shallow"), _grid(cfg.search.deep, "deep")
    legal = [s for s in shallow_grid if s < deep_grid[-1]]
    if not legal:
        raise ConfigError(f"search.deep ({deep_grid}) has no depth above any of search.shallow ({shallow_grid})")
    step = int(cfg.search.shallow.get("step", 1))
    shallow = trial.suggest_int("model.shallow.depth", legal[0], legal[-1], step=step)
    deeper = [d for d in deep_grid if d > shallow]
    trial.suggest_int("model.deep.depth", deeper[0], deep_grid[-1], step=int(cfg.search.deep.get("step", 1)))
