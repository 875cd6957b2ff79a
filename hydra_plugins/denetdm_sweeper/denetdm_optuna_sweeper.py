"""denetdm's Optuna sweeper as a Hydra plugin, chosen with `override /hydra/sweeper: denetdm_optuna`.

Its configuration is hydra-optuna-sweeper's (the same keys, the `params` grammar and the sampler group
`hydra/sweeper/sampler`), for today's Optuna: the released plugin pins optuna<3, so this one keeps only its schema
(as Hydra's main branch has it for Optuna 4) and runs denetdm's loop (denetdm/sweeps/sweeper.py): a failure limit
over the whole sweep, repeats answered from the study, resumable studies, trials.jsonl. Optuna is imported only
when a sweep starts (it costs seconds).
"""

import logging
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import MISSING, DictConfig


class Direction(Enum):
    minimize = 1
    maximize = 2


@dataclass
class TPESamplerConfig:
    _target_: str = "optuna.samplers.TPESampler"
    seed: int | None = None
    consider_prior: bool | None = None  # the four None ones are deprecated in Optuna 4: left to its defaults
    prior_weight: float | None = None
    consider_magic_clip: bool | None = None
    consider_endpoints: bool | None = None
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    multivariate: bool = False
    warn_independent_sampling: bool | None = None


@dataclass
class RandomSamplerConfig:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: int | None = None


@dataclass
class GridSamplerConfig:
    _target_: str = "optuna.samplers.GridSampler"
    _partial_: bool = True  # the grid comes from hydra.sweeper.params when the sweep starts
    seed: int | None = None


@dataclass
class CmaEsSamplerConfig:
    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: int | None = None
    x0: dict[str, Any] | None = None
    sigma0: float | None = None
    independent_sampler: Any = None
    warn_independent_sampling: bool = True
    consider_pruned_trials: bool = False
    restart_strategy: Any = None
    inc_popsize: int = 2
    use_separable_cma: bool = False
    source_trials: Any = None


@dataclass
class NSGAIISamplerConfig:
    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: int | None = None
    population_size: int = 50
    mutation_prob: float | None = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5
    constraints_func: Any = None


@dataclass
class GPSamplerConfig:
    _target_: str = "optuna.samplers.GPSampler"
    seed: int | None = None
    independent_sampler: Any = None
    n_startup_trials: int = 10
    deterministic_objective: bool = False
    constraints_func: Any = None
    warn_independent_sampling: bool = True


@dataclass
class QMCSamplerConfig:
    _target_: str = "optuna.samplers.QMCSampler"
    seed: int | None = None
    qmc_type: str = "sobol"
    scramble: bool = False
    independent_sampler: Any = None
    warn_asynchronous_seeding: bool = True
    warn_independent_sampling: bool = True


SAMPLERS = {
    "tpe": TPESamplerConfig,
    "random": RandomSamplerConfig,
    "grid": GridSamplerConfig,
    "cmaes": CmaEsSamplerConfig,
    "nsgaii": NSGAIISamplerConfig,
    "gp": GPSamplerConfig,
    "qmc": QMCSamplerConfig,
}


@dataclass
class DenetdmOptunaSweeperConf:
    """hydra-optuna-sweeper's fields (less the deprecated `search_space`), with denetdm's defaults and keys."""

    _target_: str = "hydra_plugins.denetdm_sweeper.denetdm_optuna_sweeper.DenetdmOptunaSweeper"
    # the sampler and pruner nodes reach the loop as config, which builds them itself: a bad value (a negative
    # sampler seed) is then one error line, not Hydra's instantiation error
    _recursive_: bool = False
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}])
    sampler: Any = MISSING
    direction: Any = Direction.minimize  # one objective: denetdm sweeps maximise the run's objective
    # an Optuna storage URL (sqlite:///..., postgresql://...), `journal` (<sweep dir>/study.journal, for network
    # filesystems) or journal:<file>; null: <sweep dir>/study.db, or study.journal under launcher=slurm
    # (denetdm.sweeps.pruning.study_storage)
    storage: Any = None
    study_name: str | None = None
    n_trials: int = 20
    n_jobs: int = 1
    # null: trials in batches of n_jobs, each batch launched once the one before it has finished; N: worker mode,
    # N jobs (launcher=slurm) that each take the sweep's next trial from the study as soon as their last one
    # finished, so no job waits for a batch's slowest trial (docs/cluster.md)
    workers: Any = None
    max_failure_rate: float = 0.5  # of n_trials, over the whole sweep
    params: dict[str, str] | None = None
    # a dotpath to a callable (cfg, trial) -> None that suggests further values (dependent parameters)
    custom_search_space: str | None = None
    # null, median or successive_halving (denetdm.sweeps.pruning.PRUNERS), or a node with _target_: each job reports its
    # objective's metric per epoch of the final phase, and a pruned trial stops (PRUNED, not a failure)
    pruner: Any = None
    # true: a trial whose stage 1 says its deep expert collapsed (results.json stage1/collapsed, label-free) is FAIL,
    # so it is never the best trial; n_trials counts it (its run finished) and max_failure_rate does not
    fail_collapsed: Any = False
    # seconds between the heartbeats of a running trial in a database storage (postgresql://...): a worker's trial
    # whose heartbeats stop for 3 intervals (the worker was killed) is failed by the next worker to ask for trials,
    # and its values are tried again once (denetdm.sweeps.heartbeat); null: none
    heartbeat_s: Any = 60
    # Read by run.py in each job: this sweeper records a failed trial itself, so the job re-raises its error
    # instead of returning NaN (what the basic sweeper needs to go on with a grid).
    records_failures: bool = True


# Optuna imports alembic, which logs a line per plugin it sets up: keep those lines out of the sweep's log.
logging.getLogger("alembic").setLevel(logging.WARNING)

_store = ConfigStore.instance()
_store.store(group="hydra/sweeper", name="denetdm_optuna", node=DenetdmOptunaSweeperConf, provider="denetdm")
for _name, _node in SAMPLERS.items():
    _store.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="denetdm")


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
