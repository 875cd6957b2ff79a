"""denetdm's Optuna loop, run by the `denetdm_optuna` sweeper plugin (hydra_plugins/denetdm_sweeper/).

It subclasses hydra-optuna-sweeper's implementation (pinned at 1.3.0 in requirements.txt) for its parsing of
search spaces and its launcher set-up, and replaces the loop: the plugin checks `max_failure_rate` per batch
of `n_jobs` trials, so with `n_jobs=1` the first failing trial ended the sweep; here the sweep goes on until
more than `floor(max_failure_rate * n_trials)` trials have failed. Each job gets its trial number, study and
sampled values in its config (`trial.*`); every trial is a line of `trials.jsonl`; a repeat of a finished
trial is answered from the study; several workers can open one study at once.
"""

import functools
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from hydra_plugins.hydra_optuna_sweeper import _impl
from omegaconf import OmegaConf

from denetdm.errors import DenetdmError
from denetdm.tracking import JsonLines

log = logging.getLogger(__name__)
_COMPLETE = optuna.trial.TrialState.COMPLETE


def create_or_load_study(study_name: str | None, storage: str | None, sampler: Any, direction: str) -> optuna.Study:
    """optuna.create_study(load_if_exists=True) that survives two workers creating the same study at once."""
    for attempt in range(5):
        try:
            return optuna.create_study(
                study_name=study_name, storage=storage, sampler=sampler, direction=direction, load_if_exists=True
            )
        except Exception as e:  # the loser of the race sees an integrity error from the storage
            if storage is None or attempt == 4:
                raise
            log.info("study creation raced with another worker (%s); loading it", type(e).__name__)
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def study_summary(study: optuna.Study) -> dict[str, Any]:
    """Study name, counts of complete and failed trials, and the best trial once one has completed."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    out: dict[str, Any] = {"study_name": study.study_name, "n_complete": states.count(_COMPLETE)}
    out["n_failed"] = states.count(optuna.trial.TrialState.FAIL)
    if out["n_complete"]:
        best = study.best_trial
        out |= {"best_params": best.params, "best_value": best.value, "best_trial": best.number}
    return out


class OptunaLoop(_impl.OptunaSweeperImpl):
    """The plugin's sweeper with a sweep-wide failure limit, per-trial records and reused repeats."""

    def __init__(self, **kwargs: Any) -> None:
        rate, n_trials = kwargs.get("max_failure_rate"), kwargs.get("n_trials")
        if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate <= 1:
            sys.exit(f"error: hydra.sweeper.max_failure_rate must be a number in [0, 1], got {rate!r}")
        if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
            sys.exit(f"error: hydra.sweeper.n_trials must be a positive integer, got {n_trials!r}")
        super().__init__(**kwargs)

    def _search_space(self, arguments: list[str]) -> tuple[dict, dict]:
        self._process_searchspace_config()
        dists, fixed = _impl.create_params_from_overrides(self._parse_sweeper_params_config() + list(arguments))
        dists = {**(self.search_space_distributions or {}), **dists}
        if isinstance(self.sampler, functools.partial) and self.sampler.func == optuna.samplers.GridSampler:
            grid = {name: self._to_grid_sampler_choices(d) for name, d in dists.items()}
            self.sampler = self.sampler(grid)
            self.n_trials = min(self.n_trials, math.prod(len(v) for v in grid.values()))
        return {k: v for k, v in dists.items() if k not in fixed}, fixed

    def sweep(self, arguments: list[str]) -> None:
        """Ask, launch and tell in batches of n_jobs until n_trials ran or too many failed."""
        directions = self._get_directions()
        if len(directions) != 1:
            sys.exit("error: denetdm sweeps optimise one objective; set hydra.sweeper.direction=maximize")
        dists, fixed = self._search_space(arguments)
        study = create_or_load_study(self.study_name, self.storage, self.sampler, directions[0])
        log.info("Study %s (storage %s, sampler %s)", study.study_name, self.storage, type(self.sampler).__name__)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        record = JsonLines(sweep_dir / "trials.jsonl")
        if self.n_jobs < 1:  # joblib's n_jobs=-1: one trial per core
            self.n_jobs = os.cpu_count() or 1
        failed = done = 0
        while done < self.n_trials:
            trials = [study.ask() for _ in range(min(self.n_jobs, self.n_trials - done))]
            overrides = self._trial_overrides(study, trials, dists, fixed)
            rows = self._run_batch(study, trials, overrides)
            for row in rows:
                record.append(row)
            failed += sum(row["state"] == "FAIL" for row in rows)
            done += len(trials)
            self._check_failures(study, sweep_dir, failed, done, record.path)
        self._save_best(study, sweep_dir)

    def _trial_overrides(self, study: optuna.Study, trials: list, dists: dict, fixed: dict) -> list[tuple]:
        """Each trial's job overrides (its sampled values, number and study); one error line if unsampleable."""
        try:
            configured = self._configure_trials(trials, dists, fixed)
        except (DenetdmError, ValueError) as e:  # a space that cannot be sampled, or a fixed value in it
            for t in trials:  # not left RUNNING in a shared study
                study.tell(t, state=optuna.trial.TrialState.FAIL)
            hint = "; drop that override or narrow the search range instead" if "Overlapping" in str(e) else ""
            sys.exit(f"error: the search space cannot be sampled: {e}{hint}".replace("\n", " "))
        return [
            (*o, f"trial.number={t.number}", f"trial.study={study.study_name}", _params_override(t.params))
            for t, o in zip(trials, configured)
        ]

    def _run_batch(self, study: optuna.Study, trials: list, overrides: list[tuple]) -> list[dict]:
        """Launch the trials that are not repeats, tell the study every result; the trials.jsonl rows."""
        # a repeat of a completed trial (TPE often proposes one on small integer spaces) is answered from the
        # study: the same config gives the same numbers, so training it again would only cost time
        known: dict[str, optuna.trial.FrozenTrial] = {}
        for t in study.get_trials(deepcopy=False, states=(_COMPLETE,)):
            known.setdefault(_key(t.params), t)  # the first run of these values, not a repeat of it
        repeats = {t.number: known.get(_key(t.params)) for t in trials}
        todo = [(t, o) for t, o in zip(trials, overrides) if repeats[t.number] is None]
        launched = self.launcher.launch([o for _, o in todo], self.job_idx) if todo else []
        returns = dict(zip([t.number for t, _ in todo], launched))
        rows = []
        for trial in trials:
            row = {"number": trial.number, "study": study.study_name, "params": trial.params}
            if (twin := repeats[trial.number]) is not None:
                value, error, row["repeat_of"] = twin.value, None, twin.number
                log.info("trial %d repeats trial %d: its value %s is reused", trial.number, twin.number, value)
            else:
                value, error = _value(returns[trial.number])
                row |= _trial_facts(returns[trial.number], trial.params)
                row["job"] = self.job_idx
                self.job_idx += 1
            state = _COMPLETE if error is None else optuna.trial.TrialState.FAIL
            study.tell(trial, value if error is None else None, state=state)
            if error is not None:
                log.warning("trial %d failed: %s", trial.number, error)
            rows.append(row | {"state": state.name, "value": value, "error": error})
        return rows

    def _check_failures(self, study: optuna.Study, sweep_dir: Path, failed: int, done: int, record: Path) -> None:
        """Stop with one error line (finished trials kept) once more trials failed than the limit allows."""
        limit = math.floor(self.max_failure_rate * self.n_trials)
        if failed > limit:
            self._save_best(study, sweep_dir)
            sys.exit(
                f"error: {failed} of {done} trials failed, more than max_failure_rate={self.max_failure_rate} "
                f"of n_trials={self.n_trials} allows ({limit}); the errors are in {record} and in each "
                "failed job's run.log"
            )

    def _save_best(self, study: optuna.Study, sweep_dir: Path) -> None:
        summary = study_summary(study)
        out = {"name": "optuna", "study_name": study.study_name, "storage": self.storage, **summary}
        OmegaConf.save(OmegaConf.create(out), sweep_dir / "optimization_results.yaml")
        if not summary["n_complete"]:
            sys.exit(f"error: no trial of study {study.study_name} completed; see {sweep_dir / 'trials.jsonl'}")
        log.info("Best trial %d: value %s, params %s", out["best_trial"], out["best_value"], out["best_params"])


def _key(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def _params_override(params: dict) -> str:
    # the sampled values again as one dict, so the job's config (and W&B) can tell them from fixed overrides
    return (
        "trial.params={" + ",".join(f"{k}:{v!r}" if isinstance(v, str) else f"{k}:{v}" for k, v in params.items()) + "}"
    )


def _trial_facts(ret: Any, params: dict) -> dict:
    """What trials.jsonl adds to a launched trial: its stage-1 separation (results.json) and whether it is
    an equal-depth control."""
    facts: dict = {}
    if params.get("model.shallow.depth") is not None and params.get("model.shallow.depth") == params.get(
        "model.deep.depth"
    ):
        facts["equal_depth"] = True
    try:
        results = json.loads((Path(ret.hydra_cfg.hydra.runtime.output_dir) / "results.json").read_text())
        if "stage1/separation" in results:
            facts["separation"] = results["stage1/separation"]
    except Exception:  # a failed job has no results: its error is recorded instead
        pass
    return facts


def _value(ret: Any) -> tuple[float | None, str | None]:
    # a failed job re-raises its exception here; a non-finite objective counts as a failure too
    try:
        value = float(ret.return_value)
    except Exception as e:
        return None, f"{type(e).__name__}: {e}".splitlines()[0]
    if not math.isfinite(value):
        return None, f"the objective is {value}"
    return value, None
