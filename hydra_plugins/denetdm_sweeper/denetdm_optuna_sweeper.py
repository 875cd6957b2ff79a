"""denetdm's Optuna sweeper as a Hydra plugin, chosen with `override /hydra/sweeper: denetdm_optuna`.

It keeps hydra-optuna-sweeper's configuration (samplers, `params` grammar, custom search spaces) and runs
denetdm's loop (denetdm/sweeps/sweeper.py): a failure limit over the whole sweep, repeats answered from the study,
trials.jsonl and optimization_results.yaml. Optuna is imported only when a sweep starts (it costs ~3 s).
"""

import logging
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from omegaconf import DictConfig


@dataclass
class DenetdmOptunaSweeperConf(OptunaSweeperConf):
    """hydra-optuna-sweeper's fields, with denetdm's defaults."""

    _target_: str = "hydra_plugins.denetdm_sweeper.denetdm_optuna_sweeper.DenetdmOptunaSweeper"
    n_jobs: int = 1
    max_failure_rate: float = 0.5  # of n_trials, over the whole sweep
    # null, median or successive_halving (denetdm.sweeps.pruning.PRUNERS), or a node with _target_: each job reports its
    # objective's metric per epoch of the final phase, and a pruned trial stops (PRUNED, not a failure)
    pruner: Any = None
    # Read by run.py in each job: this sweeper records a failed trial itself, so the job re-raises its error
    # instead of returning NaN (what the basic sweeper needs to go on with a grid).
    records_failures: bool = True


# Optuna imports alembic, which logs a line per plugin it sets up (Hydra imports Optuna when it builds the
# sampler of a sweep): keep those lines out of the sweep's log.
logging.getLogger("alembic").setLevel(logging.WARNING)

ConfigStore.instance().store(
    group="hydra/sweeper", name="denetdm_optuna", node=DenetdmOptunaSweeperConf, provider="denetdm"
)


class DenetdmOptunaSweeper(Sweeper):
    """The Hydra-facing plugin; the loop itself is denetdm.sweeps.sweeper.OptunaLoop."""

    def __init__(self, records_failures: bool = True, **kwargs: Any) -> None:
        self.kwargs = kwargs  # sampler, direction, storage, study_name, n_trials, n_jobs, max_failure_rate, ...
        self.loop: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Build the loop (importing Optuna) and its launcher."""
        from denetdm.sweeps.sweeper import OptunaLoop

        self.loop = OptunaLoop(**self.kwargs)
        self.loop.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        """Run the study."""
        return self.loop.sweep(arguments)
