"""Train and evaluate DeNetDM: `python run.py dataset=cmnist severity=4` (Hydra overrides; `-m` sweeps).

The command line only: denetdm.pipeline.train builds everything from the config and runs the stages. The
return value of `main` is the validation unbiased accuracy of the selected target model (the sweep objective).
"""

import logging
import math
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from denetdm.cli import check_group_choices, check_launcher, check_overrides, quote_numeric_choices, record_swept_values
from denetdm.errors import DenetdmError
from denetdm.pipeline import train
from denetdm.pruning import TrialPruned
from denetdm.report import objective

log = logging.getLogger("denetdm")


def _pruning(cfg: DictConfig, hc) -> dict | None:
    # a trial of a denetdm_optuna sweep with a pruner reports each epoch to its trial in the study's storage
    pruner = hc.sweeper.get("pruner")
    if pruner is None or cfg.trial.number is None:
        return None
    from denetdm.pruning import study_storage

    storage = study_storage(hc.sweeper.get("storage"), hc.sweep.dir)
    return {"storage": storage, "study": cfg.trial.study, "number": int(cfg.trial.number), "pruner": pruner}


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Hydra entry point: one clear error line for bad input; the objective for sweeps."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    sweeping = hc.mode == RunMode.MULTIRUN
    if sweeping and cfg.trial.params is None:
        record_swept_values(cfg, hc)
    try:
        slot = int(hc.job.num) if sweeping else None  # several GPUs: one per parallel job, round robin
        return objective(train(cfg, run_dir, _pruning(cfg, hc) if sweeping else None, slot))
    except DenetdmError as e:
        if not sweeping:
            sys.exit(f"error: {e}")
        pruned = isinstance(e, TrialPruned)
        log.log(logging.INFO if pruned else logging.ERROR, "trial %s: %s", "pruned" if pruned else "failed", e)
        if hc.sweeper.get("records_failures", False):
            raise  # a sweeper that records failed trials itself (denetdm_optuna) gets the error
        return math.nan  # the basic sweeper would stop at the first failed job: go on with the grid
    except KeyboardInterrupt:
        sys.exit(
            f"interrupted: finished epochs are saved in {run_dir}; run the same command with "
            f"hydra.run.dir={run_dir} to resume"
        )


if __name__ == "__main__":
    args = sys.argv[1:]
    if problem := check_group_choices(args) or check_launcher(args) or check_overrides(args):
        sys.exit(problem)
    sys.argv[1:] = quote_numeric_choices(sys.argv[1:])
    main()
