"""`launcher=slurm`: hydra-submitit-launcher's SLURM launcher (an optional plugin: make install-launchers), with a
job the cluster refuses said in one line instead of submitit's traceback. Registered only where that plugin is
installed; without it, `launcher=slurm` says so before Hydra starts (denetdm.cli.check_launcher).
"""

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

try:
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
    from submitit.core.utils import FailedJobError
except ImportError:  # the optional plugin is not installed
    SlurmLauncher = None


if SlurmLauncher is not None:

    @dataclass
    class DenetdmSlurmConf(SlurmQueueConf):
        _target_: str = "hydra_plugins.denetdm_slurm.slurm_launcher.DenetdmSlurmLauncher"

    ConfigStore.instance().store(
        group="hydra/launcher", name="denetdm_slurm", node=DenetdmSlurmConf, provider="denetdm"
    )

    class DenetdmSlurmLauncher(SlurmLauncher):
        """submitit's SLURM launcher; sbatch's refusal of a job (resources no node has, a wrong partition or
        account) is one error line."""

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
            try:
                return super().launch(job_overrides, initial_job_idx)
            except FailedJobError as e:
                said = "; ".join(line.removeprefix("sbatch: error: ") for line in str(e).splitlines() if line.strip())
                sys.exit(
                    f"error: the cluster refused the job ({said}): check hydra.launcher's partition, account, qos, "
                    "mem_gb, gpus_per_node, cpus_per_task and timeout_min against `sinfo` (conf/launcher/slurm.yaml)"
                )
