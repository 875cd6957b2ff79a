"""`launcher=slurm`: hydra-submitit-launcher's SLURM launcher (an optional plugin: make install-launchers), with a
job the cluster refuses said in one line instead of submitit's traceback, and a job that SLURM stops to start it
again later (a requeue, a preemption) stopped at once, so that its next start resumes the run from its last
checkpoint. Registered only where that plugin is installed; without it, `launcher=slurm` says so before Hydra
starts (denetdm.cli.check_launcher).
"""

import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher  # the module: Hydra lists its class once
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    from submitit.core.utils import FailedJobError
except ImportError:  # the optional plugin is not installed
    submitit_launcher = None


if submitit_launcher is not None:

    @dataclass
    class DenetdmSlurmConf(SlurmQueueConf):
        _target_: str = "hydra_plugins.denetdm_slurm.slurm_launcher.DenetdmSlurmLauncher"

    ConfigStore.instance().store(
        group="hydra/launcher", name="denetdm_slurm", node=DenetdmSlurmConf, provider="denetdm"
    )

    class DenetdmSlurmLauncher(submitit_launcher.SlurmLauncher):
        """submitit's SLURM launcher; sbatch's refusal of a job (resources no node has, a wrong partition or
        account) is one error line."""

        def __call__(self, *args, **kwargs):
            """Inside the job: SIGTERM ends the process at once, with no result written. submitit lets a job go
            on after SIGTERM until SLURM's SIGKILL, and what the half-stopped run then raises (W&B's service is
            gone first) would reach the sweep as the trial's failure; without a result, the job's next start
            resumes its run (its finished epochs kept), and a cancelled job is a failure the sweep records."""
            signal.signal(signal.SIGTERM, _stop_now)
            return super().__call__(*args, **kwargs)

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
            try:
                return super().launch(job_overrides, initial_job_idx)
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
