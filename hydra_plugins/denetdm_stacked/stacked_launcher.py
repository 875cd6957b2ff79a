"""`launcher=stacked`: the jobs of a multirun batch that can train as one stacked model do (denetdm.training.stacked).

Jobs are grouped by `denetdm.training.stacked.stack_key` (equal configs but for seeds, what their methods declare
in `stack_apart`, learning rates and weight decays); a group of several trains as one stack, a job alone runs as
the basic launcher would run it. Each member still gets its own run directory from Hydra (`.hydra/`, run.log,
results.json, checkpoints, W&B run), plus `stack.json`.
"""

import logging
import sys
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)
VECTORIZE = {"auto": None, "true": True, "false": False}  # None: vmap on CUDA only


@dataclass
class StackedLauncherConf:
    _target_: str = "hydra_plugins.denetdm_stacked.stacked_launcher.StackedLauncher"
    # untyped, so that a bad value reaches the launcher's own one-line check instead of OmegaConf's report
    max_members: Any = 16  # the most runs in one stack (memory: each member keeps its data and optimiser)
    vectorize: Any = "auto"  # vmap the members: auto (on CUDA), true, false (one after another: a plain run's bits)


ConfigStore.instance().store(group="hydra/launcher", name="stacked", node=StackedLauncherConf, provider="denetdm")


class StackedLauncher(Launcher):
    """Runs a batch of jobs, stacking those that can train together."""

    def __init__(self, max_members: int = 16, vectorize: str = "auto") -> None:
        if str(vectorize).lower() not in VECTORIZE:
            sys.exit(f"error: hydra.launcher.vectorize must be auto, true or false, got {vectorize!r}")
        if not isinstance(max_members, int) or isinstance(max_members, bool) or max_members < 1:
            sys.exit(f"error: hydra.launcher.max_members must be a positive integer, got {max_members!r}")
        self.max_members, self.vectorize = max_members, VECTORIZE[str(vectorize).lower()]
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return self.run([(list(o), initial_job_idx + i) for i, o in enumerate(job_overrides)])

    def run(self, jobs: Sequence[tuple[list[str], int]]) -> list[JobReturn]:
        """Run the jobs (overrides, job number), stacking those with equal stack keys; their returns in order."""
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        cfgs, groups = [], {}
        for i, (overrides, idx) in enumerate(jobs):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.id = cfg.hydra.job.num = idx
            cfgs.append(cfg)
            groups.setdefault(job_stack_key(cfg), []).append(i)
        returns: list[JobReturn | None] = [None] * len(cfgs)
        for members in groups.values():
            for start in range(0, len(members), self.max_members):
                part = members[start : start + self.max_members]
                outs = self._stack([cfgs[i] for i in part]) if len(part) > 1 else [self._plain(cfgs[part[0]])]
                for i, ret in zip(part, outs, strict=True):
                    returns[i] = ret
        return returns

    def _run_job(self, task_function: TaskFunction, cfg: DictConfig) -> JobReturn:
        return run_job(
            hydra_context=self.hydra_context,
            task_function=task_function,
            config=cfg,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )

    def _plain(self, cfg: DictConfig) -> JobReturn:
        ret = self._run_job(self.task_function, cfg)
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret

    def _stack(self, cfgs: list[DictConfig]) -> list[JobReturn]:
        """Set each member's run directory up as Hydra does, then train them all as one stack."""
        from denetdm.sweeps.jobs import record_swept_values, trial_pruning

        members = []

        def collect(cfg: DictConfig) -> None:
            hc = HydraConfig.get()
            if cfg.trial.params is None:
                record_swept_values(cfg, hc)
            members.append((cfg, Path(hc.runtime.output_dir), trial_pruning(cfg, hc)))

        rets = [self._run_job(collect, c) for c in cfgs]
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        log.info("training jobs %s as one stack", ", ".join(str(c.hydra.job.num) for c in cfgs))
        records = bool(self.config.hydra.sweeper.get("records_failures", False))
        with _logs_into([d for _, d, _ in members]):
            values = _train(members, self.vectorize, records)
        for ret, value in zip(rets, values, strict=True):
            failed = isinstance(value, BaseException)
            ret.status, ret._return_value = (JobStatus.FAILED if failed else JobStatus.COMPLETED), value
        return rets


def job_stack_key(cfg: DictConfig) -> str:
    """A job's stack key (denetdm.training.stacked.stack_key) from its composed config."""
    from denetdm.training.stacked import stack_key

    job = OmegaConf.to_container(cfg, resolve=False)
    job.pop("hydra", None)
    job = OmegaConf.to_container(OmegaConf.create(job), resolve=True)
    return stack_key(job)


def _train(members: list, vectorize: bool | None, records: bool) -> list:
    """The members' job values (run.py's error policy: an error for each stopped member where the sweeper
    records failures, else NaN)."""
    from denetdm.errors import DenetdmError
    from denetdm.sweeps.jobs import job_value, note_outcome
    from denetdm.training.pipeline import train_runs

    cfgs, dirs, prunings = (list(x) for x in zip(*members, strict=True))
    try:
        outcomes = train_runs(cfgs, dirs, prunings, vectorize=vectorize)
    except DenetdmError as e:  # before or outside the members' phases: the whole stack
        outcomes = [e] * len(members)
    for run_dir, outcome in zip(dirs, outcomes, strict=True):
        note_outcome(run_dir, outcome)
    return [job_value(o, records) for o in outcomes]


@contextmanager
def _logs_into(run_dirs: list[Path]):
    """The stack's log lines go to every member's run.log too."""
    root = logging.getLogger()
    handlers = [logging.FileHandler(d / "run.log") for d in run_dirs]
    fmt = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    try:
        yield
    finally:
        for h in handlers:
            root.removeHandler(h)
            h.close()
