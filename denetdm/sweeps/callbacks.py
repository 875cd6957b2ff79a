"""Hydra callbacks (hydra.callbacks in conf/config.yaml): Hydra's own way to act at the end of a sweep."""

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepDone(Callback):
    """A finished sweep's last lines say where its runs are and how to compare them."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Print the commands that show the sweep's table and plots."""
        where = config.hydra.sweep.dir
        print(f"sweep done: runs in {where}; table: python sweep.py table {where}; plots: python sweep.py plot {where}")
