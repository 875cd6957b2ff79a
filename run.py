"""Train and evaluate DeNetDM: `python run.py dataset=cmnist severity=4` (Hydra overrides; `-m` sweeps).

The command line only: denetdm.training.pipeline.train builds everything from the config and runs the stages. The
return value of `main` is the validation unbiased accuracy of the selected target model (the sweep objective).
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from denetdm.cli import check_group_choices, check_launcher, check_overrides, quote_numeric_choices
from denetdm.errors import DenetdmError
from denetdm.sweeps.jobs import job_value, note_outcome, record_swept_values, trial_pruning
from denetdm.training.pipeline import train


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
        outcome = train(cfg, run_dir, trial_pruning(cfg, hc) if sweeping else None, slot)
        note_outcome(run_dir, outcome)
        if not sweeping:
            print(f"files in {run_dir}; compare with other runs: python sweep.py table {run_dir} <other run dirs>")
    except DenetdmError as e:
        note_outcome(run_dir, e)
        if not sweeping:
            sys.exit(f"error: {e}")
        outcome = e
    except KeyboardInterrupt:
        sys.exit(
            f"interrupted: finished epochs are saved in {run_dir}; run the same command with "
            f"hydra.run.dir={run_dir} to resume"
        )
    value = job_value(outcome, bool(hc.sweeper.get("records_failures", False)))
    if isinstance(value, BaseException):
        raise value  # the sweeper records the failed (or pruned) trial itself
    return value


if __name__ == "__main__":
    args = sys.argv[1:]
    if problem := check_group_choices(args) or check_launcher(args) or check_overrides(args):
        sys.exit(problem)
    sys.argv[1:] = quote_numeric_choices(sys.argv[1:])
    main()
