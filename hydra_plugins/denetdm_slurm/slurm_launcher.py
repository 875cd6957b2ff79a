"""`launcher=slurm`: hydra-submitit-launcher's SLURM launcher (an optional plugin: make install-launchers), with a
job the cluster refuses said in one line instead of submitit's traceback, and a job that SLURM stops to start it
again later (a requeue, a preemption) stopped at once, so that its next start resumes the run from its last
checkpoint. Two ways to send fewer, fuller jobs: `hydra.launcher.stack=true` (a batch's seeds of one setting
train as one stack in one job) and the worker jobs of `hydra.sweeper.workers` (each runs trial after trial from
the sweep's study). Registered only where that plugin is installed; without it, `launcher=slurm` says so before Hydra
starts (denetdm.cli.check_launcher).
"""

import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.denetdm_stacked.stacked_launcher import StackedLauncher, job_stack_key

try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher  # the module: Hydra lists its class once
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
    from submitit.core.utils import FailedJobError
except ImportError:  # the optional plugin is not installed
    submitit_launcher = None


if submitit_launcher is not None:

    @dataclass
    class DenetdmSlurmConf(SlurmQueueConf):
        _target_: str = "hydra_plugins.denetdm_slurm.slurm_launcher.DenetdmSlurmLauncher"
        # true: the jobs of a batch that can train as one stack (seeds of one setting) go to one SLURM job and
        # train there as launcher=stacked trains them; at most max_members a job, vmapped as `vectorize` says
        stack: Any = False
        max_members: Any = 16
        vectorize: Any = "auto"

    ConfigStore.instance().store(
        group="hydra/launcher", name="denetdm_slurm", node=DenetdmSlurmConf, provider="denetdm"
    )

    class DenetdmSlurmLauncher(submitit_launcher.SlurmLauncher):
        """submitit's SLURM launcher; sbatch's refusal of a job (resources no node has, a wrong partition or
        account) is one error line; stacks of jobs in one SLURM job; the worker jobs of hydra.sweeper.workers."""

        def __init__(self, stack: Any = False, max_members: Any = 16, vectorize: Any = "auto", **params: Any) -> None:
            if not isinstance(stack, bool):
                sys.exit(f"error: hydra.launcher.stack must be true or false, got {stack!r}")
            self.stack, self.stacker = stack, StackedLauncher(max_members, vectorize)  # checks both values
            super().__init__(**params)

        def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
            super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
            self.stacker.setup(hydra_context=hydra_context, task_function=task_function, config=config)
            if self.stack and config.hydra.sweeper.get("workers"):
                sys.exit(
                    "error: hydra.launcher.stack=true trains a batch's seeds together, and hydra.sweeper.workers "
                    "runs one trial at a time per worker: choose one"
                )

        def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
            """Inside the job: SIGTERM ends the process at once, with no result written. submitit lets a job go
            on after SIGTERM until SLURM's SIGKILL, and what the half-stopped run then raises (W&B's service is
            gone first) would reach the sweep as the trial's failure; without a result, the job's next start
            resumes its run (its finished epochs kept), and a cancelled job is a failure the sweep records."""
            signal.signal(signal.SIGTERM, _stop_now)
            return super().__call__(*args, **kwargs)

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
            """One SLURM job per trial, or with `stack`, per stack of trials."""
            if not self.stack:
                with _refusals():
                    return super().launch(job_overrides, initial_job_idx)
            groups = self._stacks(job_overrides, initial_job_idx)
            with _refusals():
                jobs = self._executor().map_array(self._run_stack, groups, [Singleton.get_state()] * len(groups))
            returns = {}
            for group, job in zip(groups, jobs, strict=True):
                returns |= {idx: ret for (_, idx), ret in zip(group, job.results()[0], strict=True)}
            return [returns[initial_job_idx + i] for i in range(len(job_overrides))]

        def run_workers(self, work: Callable[[Any], dict], n: int) -> list:
            """n jobs that each call `work` with a launcher running trials in that job (hydra.sweeper.workers);
            each job's return, or the error that ended it (a cancelled or killed worker)."""
            state = Singleton.get_state()
            with _refusals():
                jobs = self._executor().map_array(self._run_worker, [work] * n, [state] * n)
            outs = []
            for job in jobs:
                try:
                    outs.append(job.results()[0])
                except Exception as e:  # noqa: BLE001 - the sweep recovers its trial and says how it ended
                    outs.append(e)
            return outs

        def _run_worker(self, work: Callable[[Any], dict], state: dict) -> dict:
            """Inside the job: the worker (SIGTERM as in __call__, also between trials)."""
            import submitit

            signal.signal(signal.SIGTERM, _stop_now)
            Singleton.set_state(state)
            return work(InJob(self, submitit.JobEnvironment().job_id, state))

        def _run_stack(self, jobs: list[tuple[list[str], int]], state: dict) -> list[JobReturn]:
            """Inside the job: its trials trained as launcher=stacked trains them (SIGTERM as in __call__)."""
            signal.signal(signal.SIGTERM, _stop_now)
            Singleton.set_state(state)
            return self.stacker.run(jobs)

        def _stacks(self, job_overrides: Sequence[Sequence[str]], first: int) -> list[list[tuple[list[str], int]]]:
            """The jobs (overrides, number) grouped by stack key, at most max_members a group."""
            groups: dict[str, list] = {}
            for i, overrides in enumerate(job_overrides):
                cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
                groups.setdefault(job_stack_key(cfg), []).append((list(overrides), first + i))
            size = self.stacker.max_members
            return [g[k : k + size] for g in groups.values() for k in range(0, len(g), size)]

        def _executor(self) -> Any:
            """submitit's SLURM executor with this launcher's parameters, as its launch() builds it."""
            import submitit

            params = dict(self.params)
            folder, timeouts = params.pop("submitit_folder"), params.pop("max_num_timeout")
            executor = submitit.AutoExecutor(cluster="slurm", folder=folder, slurm_max_num_timeout=timeouts)
            base = set(OmegaConf.structured(BaseQueueConf).keys())
            executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
            return executor

    class InJob:
        """A worker job's launcher: each trial runs in this process, as the SLURM launcher runs a job's trial."""

        def __init__(self, launcher: DenetdmSlurmLauncher, worker_id: str, state: dict) -> None:
            self.launcher, self.worker_id, self.state = launcher, worker_id, state

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
            returns = []
            for i, overrides in enumerate(job_overrides):
                idx = initial_job_idx + i
                returns.append(self.launcher(list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", self.state))
                hydra = self.launcher.config.hydra  # the worker's own lines: to its log, not the trial's run.log
                configure_log(hydra.hydra_logging, hydra.verbose)
            return returns


@contextmanager
def _refusals() -> Iterator[None]:
    """sbatch's refusal of a job as one error line."""
    try:
        yield
    except FailedJobError as e:
        said = "; ".join(line.removeprefix("sbatch: error: ") for line in str(e).splitlines() if line.strip())
        sys.exit(
            f"error: the cluster refused the job ({said}): check hydra.launcher's partition, account, qos, "
            "mem_gb, gpus_per_node, cpus_per_task and timeout_min against `sinfo` (conf/launcher/slurm.yaml)"
        )


def _stop_now(signum: int, frame: object) -> None:
    logging.getLogger(__name__).warning("SIGTERM: the job stops; started again, it resumes from the last checkpoint")
    logging.shutdown()
    os._exit(128 + signum)
