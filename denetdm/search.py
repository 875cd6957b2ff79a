"""Search spaces for the Optuna sweeper that its yaml grammar cannot state (dependent parameters)."""

from omegaconf import DictConfig
from optuna.trial import Trial


def depth_gap_space(cfg: DictConfig, trial: Trial) -> None:
    """Sample only legal depth pairs: shallow in [min, max - 1], then deep in [shallow + 1, max]."""
    lo, hi = int(cfg.search.depth_min), int(cfg.search.depth_max)
    shallow = trial.suggest_int("model.shallow.depth", lo, hi - 1)
    trial.suggest_int("model.deep.depth", shallow + 1, hi)
