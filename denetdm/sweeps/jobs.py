"""A sweep job (run.py under -m, or a member of a stack): the values its sweeper chose, the trial it reports to,
and the value it returns: one error policy for run.py and the stacked launcher."""


def _scalar(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def default_study(search: str | None, dataset: str, experiment: str, sweep_dir: str) -> str:
    """A sweep's study name where none is given: its search, dataset, experiment and sweep directory's name, unique
    per sweep (the default directory is named by the time the sweep started), so `study-<name>` filters one sweep."""
    from pathlib import Path

    preset = [] if experiment == "dataset_preset" else [experiment]
    return "-".join([search or "sweep", dataset, *preset, Path(sweep_dir).name])


def record_swept_values(cfg, hc) -> None:
    """The basic sweeper does not say which values it chose: keep all of the job's overrides as trial.params, and
    name the sweep's study where the command did not."""
    from omegaconf import open_dict

    chosen = [o.split("=", 1) for o in hc.overrides.task if "=" in o and not o.startswith("trial.")]
    with open_dict(cfg):
        cfg.trial.params = {k.lstrip("+~"): _scalar(v) for k, v in chosen}
        if cfg.trial.study is None:
            search = hc.runtime.choices.get("hparams_search")
            cfg.trial.study = default_study(search, cfg.dataset.name, cfg.experiment_name, hc.sweep.dir)


def note_outcome(run_dir, outcome) -> None:
    """`failed.json` in a run directory that an error stopped (its one line, which sweep.py table lists), removed
    once the run finishes; a pruned run has pruned.json, and a directory another process holds is left alone."""
    from pathlib import Path

    from denetdm.errors import BusyError, DenetdmError
    from denetdm.files.jsonlines import write_json
    from denetdm.sweeps.pruning import TrialPruned

    path = Path(run_dir) / "failed.json"
    try:
        if isinstance(outcome, dict):
            path.unlink(missing_ok=True)
        elif isinstance(outcome, DenetdmError) and not isinstance(outcome, BusyError | TrialPruned):
            write_json(path, {"error": str(outcome)})
    except OSError:
        pass  # a full disk: the error line itself still reaches the terminal and the log


def trial_pruning(cfg, hc) -> dict | None:
    """What a trial of a denetdm_optuna sweep with a pruner reports each epoch to: its trial in the study's
    storage (None outside such sweeps). `hc`: the job's Hydra config."""
    pruner = hc.sweeper.get("pruner")
    if pruner is None or cfg.trial.number is None:
        return None
    from denetdm.sweeps.pruning import study_storage

    storage = study_storage(hc.sweeper.get("storage"), hc.sweep.dir, hc.launcher.get("_target_"))
    return {"storage": storage, "study": cfg.trial.study, "number": int(cfg.trial.number), "pruner": pruner}


def job_value(outcome, records_failures: bool):
    """What a sweep job returns to its sweeper (run.py and the stacked launcher alike): the run's objective; for a
    run stopped by an error or the pruner, one log line, then the error itself to a sweeper that records failures
    (denetdm_optuna), NaN to any other (the basic sweeper would end the grid at the first failed job)."""
    import logging
    import math

    from denetdm.sweeps.pruning import TrialPruned

    if isinstance(outcome, dict):  # results.json's objective (read from its objective_key)
        return float(outcome.get("objective", math.nan))
    pruned = isinstance(outcome, TrialPruned)
    level, word = (logging.INFO, "pruned") if pruned else (logging.ERROR, "failed")
    logging.getLogger("denetdm").log(level, "trial %s: %s", word, outcome)
    return outcome if records_failures else math.nan
