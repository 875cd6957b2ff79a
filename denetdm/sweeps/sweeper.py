"""denetdm's Optuna loop, run by the `denetdm_optuna` sweeper plugin (hydra_plugins/denetdm_sweeper/).

It keeps hydra-optuna-sweeper's configuration and search-space grammar (denetdm/sweeps/space.py) on today's Optuna,
with its own loop: that plugin checks `max_failure_rate` per batch of `n_jobs` trials, so with `n_jobs=1` the first
failing trial ended the sweep; here the sweep goes on until more than `floor(max_failure_rate * n_trials)` trials
have failed. Each job gets its trial number, study and sampled values in its config (`trial.*`); every trial is a
line of `trials.jsonl`; a repeat of a finished trial is answered from the study; several workers can open one study
at once. With `workers`, the launcher starts that many worker jobs that each ask for trial after trial instead of
batches that wait for their slowest trial (denetdm/sweeps/modes.py).

Resumable: the study lives in `<sweep dir>/study.db` unless `storage` says otherwise, and every trial carries
its sweep directory and job number as user attributes. Running the same command again continues the study
until this sweep directory has `n_trials` COMPLETE (or PRUNED) trials; trials a killed sweep left RUNNING are
marked FAIL (with the reason) and their values tried again in their own run directories, which resume from
their last finished epoch. trials.jsonl and optimization_results.yaml are rewritten from the study.
"""

import functools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from denetdm.errors import BusyError, DenetdmError
from denetdm.files.atomic import atomic_write
from denetdm.files.jsonlines import JsonLines
from denetdm.files.lock import folder_lock
from denetdm.fingerprint import differences, fingerprint, last_phase, value_at
from denetdm.seeding import derive_seed
from denetdm.sweeps.heartbeat import rdb_storage, retry_attrs
from denetdm.sweeps.jobs import default_study
from denetdm.sweeps.pruning import (
    TrialPruned,
    build_pruner,
    check_storage,
    on_cluster,
    open_storage,
    redact,
    study_storage,
)
from denetdm.sweeps.space import configure, search_space

log = logging.getLogger(__name__)
_COMPLETE = optuna.trial.TrialState.COMPLETE
_FINISHED = (_COMPLETE, optuna.trial.TrialState.PRUNED)  # what n_trials counts
_PRUNED_MARK = "pruned"
COLLAPSED_ERROR = "stage 1's deep expert collapsed"
# the user attributes of a trial that trials.jsonl shows (besides number, params, state, value and error)
TRIAL_FACTS = (
    *("job", "repeat_of", "retry_of", "interrupted", "not_drawn", "separation", "equal_depth"),
    *("collapsed", "collapse_signal"),  # stage 1's label-free verdict on its deep expert (results.json)
)


def create_or_load_study(
    study_name: str | None,
    storage: str | None,
    sampler: Any,
    direction: str,
    pruner: Any = None,
    heartbeat_s: float | None = None,
) -> optuna.Study:
    """optuna.create_study(load_if_exists=True) that survives two workers creating the same study at once; a
    database's trials send heartbeats every `heartbeat_s` seconds (denetdm.sweeps.heartbeat)."""
    try:
        opened = open_storage(storage)
    except DenetdmError as e:
        sys.exit(f"error: {e}")
    for attempt in range(5):
        try:
            opened = rdb_storage(opened, heartbeat_s) if isinstance(opened, str) else opened
            return optuna.create_study(
                study_name=study_name,
                storage=opened,
                sampler=sampler,
                direction=direction,
                load_if_exists=True,
                pruner=pruner,
            )
        except (sqlalchemy.exc.IntegrityError, optuna.exceptions.DuplicatedStudyError) as e:
            if storage is None or attempt == 4:  # the loser of a race sees one of these from the storage
                raise
            log.info("study creation raced with another worker (%s); loading it", type(e).__name__)
            time.sleep(0.2 * (attempt + 1))
        except sqlalchemy.exc.SQLAlchemyError as e:
            sys.exit(unopenable(storage, e))
    raise AssertionError("unreachable")


def unopenable(storage: str | None, e: Exception) -> str:
    """The error line for a study storage that cannot be opened: a file's, or a server's."""
    said = redact(str(getattr(e, "orig", None) or e)).splitlines()[0]
    hint = (
        "check that it exists and is writable; a damaged study.db: move it away to start the sweep afresh (its "
        "runs' directories stay)"
        if storage is None or storage.startswith("sqlite")
        else "check that the server runs and that its database, user and password are right (the password in "
        "PGPASSWORD or ~/.pgpass, never in the URL: run directories and logs keep the URL)"
    )
    return f"error: the study storage {redact(storage)} cannot be opened ({said}): {hint}"


def sweep_setting(config: DictConfig, fixed: dict) -> dict:
    """What every trial of a sweep shares that can change its numbers: the fingerprint of the sweep's config with
    the fixed values of `hydra.sweeper.params` and the command line (denetdm.fingerprint)."""
    plain = OmegaConf.to_container(OmegaConf.masked_copy(config, [k for k in config if k != "hydra"]), resolve=True)
    parser = OverridesParser.create()
    for key, value in fixed.items():
        if value is not None and "/" not in key:  # a deletion (~key) has no value; group choices are composed
            tree, *path = [plain, *key.lstrip("+").split(".")]
            for part in path[:-1]:
                tree = tree.setdefault(part, {}) if isinstance(tree, dict) else {}
            if isinstance(tree, dict) and not isinstance(tree.get(path[-1]), dict):  # a group's choice: composed
                tree[path[-1]] = parser.parse_override(f"{key}={value}").value()
    return fingerprint(plain, last_phase(plain, (plain.get("stage") or {}).get("stages")))


def bind_setting(study: optuna.Study, setting: dict, swept: set[str], where: str) -> None:
    """A study holds one setting: the first command stores it in the study, a later one (a resume, another worker)
    with other fixed values is one error line naming the first difference; the swept keys may differ."""
    saved = study.user_attrs.get("setting")
    if saved is None:
        study.set_user_attr("setting", setting)
        return
    swept |= {name for t in study.get_trials(deepcopy=False) for name in t.params}  # also a custom space's
    diff = [d for d in differences(saved, setting) if not any(d == k or d.startswith(k + ".") for k in swept)]
    if diff:
        then, now = (json.dumps(value_at(tree, diff[0])) for tree in (saved, setting))
        sys.exit(
            f"error: study {study.study_name} ({where}) holds trials run with {diff[0]}={then}, this command has "
            f"{now}{f' (and {len(diff) - 1} more differences)' if len(diff) > 1 else ''}: resume it with the same "
            "settings, or run this setting as another sweep: a new hydra.sweep.dir (and a new hydra.sweeper.study_name "
            "where you named the study)"
        )


def study_summary(study: optuna.Study) -> dict[str, Any]:
    """Study name, counts of complete and failed trials, and the best trial once one has completed."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    out: dict[str, Any] = {"study_name": study.study_name, "n_complete": states.count(_COMPLETE)}
    out["n_failed"] = states.count(optuna.trial.TrialState.FAIL)
    if out["n_complete"]:
        best = study.best_trial
        out |= {"best_params": best.params, "best_value": best.value, "best_trial": best.number}
    return out


class OptunaLoop(Sweeper):
    """Optuna over Hydra jobs with a sweep-wide failure limit, per-trial records and reused repeats."""

    def __init__(self, **kwargs: Any) -> None:
        self.pruner = _checked_settings(kwargs)
        self.sampler, self.direction, self.storage = (
            build_sampler(kwargs["sampler"]),
            kwargs["direction"],
            kwargs["storage"],
        )
        self.study_name, self.n_trials, self.n_jobs = kwargs["study_name"], kwargs["n_trials"], kwargs["n_jobs"]
        self.max_failure_rate, self.params = kwargs["max_failure_rate"], kwargs.get("params") or {}
        self.fail_collapsed, self.heartbeat_s = kwargs.get("fail_collapsed", False), kwargs.get("heartbeat_s")
        self.extender = kwargs.get("custom_search_space")  # a dotpath: fn(cfg, trial) suggests dependent values
        self.workers = kwargs.get("workers")  # None: batches of n_jobs; N: N worker jobs (sweeps/modes.py)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Keep the config and build the launcher."""
        self.config = config
        try:
            self.extend = functools.partial(get_method(self.extender), config) if self.extender else None
        except Exception as e:
            said = " ".join(str(e).split())
            sys.exit(f"error: hydra.sweeper.custom_search_space={self.extender} is not a function to import ({said})")
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        if self.workers and not hasattr(self.launcher, "run_workers"):
            sys.exit(
                f"error: hydra.sweeper.workers={self.workers} starts worker jobs on a cluster: add launcher=slurm, "
                "or leave workers null for batches of hydra.sweeper.n_jobs trials"
            )

    def sweep(self, arguments: list[str]) -> None:
        """Ask, launch and tell, in batches of n_jobs or in worker jobs, until this sweep directory has n_trials
        finished trials or too many failed."""
        direction = getattr(self.direction, "name", self.direction)
        if direction not in ("minimize", "maximize"):
            sys.exit("error: denetdm sweeps optimise one objective; set hydra.sweeper.direction=maximize")
        try:
            dists, fixed, self.sampler, self.n_trials = search_space(
                self.params, arguments, self.sampler, self.n_trials
            )
        except DenetdmError as e:
            sys.exit(f"error: the search space cannot be sampled: {e}")
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with only_sweep(sweep_dir):  # its RUNNING trials are then dead ones
            self._sweep(sweep_dir, dists, fixed, direction)

    def _sweep(self, sweep_dir: Path, dists: dict, fixed: dict, direction: str) -> None:
        """The sweep, with its directory locked."""
        launcher = self.config.hydra.launcher.get("_target_")
        self.storage = study_storage(self.storage, sweep_dir, launcher)
        try:
            check_storage(self.storage, cluster=on_cluster(launcher))
        except DenetdmError as e:
            sys.exit(f"error: {e}")
        name = sweep_study(self.config, self.study_name, sweep_dir)
        study = create_or_load_study(name, self.storage, self.sampler, direction, self.pruner, self.heartbeat_s)
        bind_setting(study, sweep_setting(self.config, fixed), set(dists), redact(self.storage))
        self.sweep_key = str(sweep_dir.resolve())
        log.info(
            "Study %s (storage %s, sampler %s)", study.study_name, redact(self.storage), type(self.sampler).__name__
        )
        recover(study, self.own(study))  # this directory's trials that a killed sweep left RUNNING
        jobs = [t.user_attrs["job"] for t in self.own(study) if "job" in t.user_attrs]
        self.job_idx = max(jobs, default=-1) + 1
        if self.n_jobs < 1:  # joblib's n_jobs=-1: one trial per core
            self.n_jobs = os.cpu_count() or 1
        from denetdm.sweeps.modes import batches, rounds  # they build on this module

        (rounds if self.workers else batches)(self, study, dists, fixed, sweep_dir)
        write_trials(self.own(study), study.study_name, sweep_dir / "trials.jsonl")
        redact_hydra_files(sweep_dir, self.storage)
        save_best(study, self.storage, sweep_dir)

    def ask(self, study: optuna.Study) -> Any:
        """A new trial of this sweep directory."""
        trial = study.ask()
        trial.set_user_attr("sweep_dir", self.sweep_key)
        return trial

    def overrides(self, study: optuna.Study, trials: list, dists: dict, fixed: dict) -> list[tuple]:
        """The trials' job overrides, their values sampled."""
        seed = (self.config.hydra.sweeper.get("sampler") or {}).get("seed")
        return trial_overrides(study, self.own(study), trials, (self.sampler, seed, self.extend), dists, fixed)

    def after_batch(self, study: optuna.Study, sweep_dir: Path) -> None:
        """trials.jsonl rewritten, passwords out of Hydra's files, and the failure limit checked."""
        write_trials(self.own(study), study.study_name, sweep_dir / "trials.jsonl")
        redact_hydra_files(sweep_dir, self.storage)
        check_failures(self, study, sweep_dir)

    def own(self, study: optuna.Study) -> list:
        """This sweep directory's trials (other workers of a shared study have theirs)."""
        return [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("sweep_dir") == self.sweep_key]

    def count(self, study: optuna.Study, finished: bool) -> int:
        """This directory's trials that n_trials counts (finished: complete, pruned, or failed for a collapsed
        deep expert), or the failures that max_failure_rate counts (the other failed ones)."""
        own = [t for t in self.own(study) if not t.user_attrs.get("interrupted")]
        if finished:
            return sum(map(counted, own))
        return sum(t.state == optuna.trial.TrialState.FAIL and not _failed_collapsed(t) for t in own)


def counted(t: Any) -> bool:
    """A trial that n_trials counts as finished: complete, pruned, or failed for a collapsed deep expert."""
    return t.state in _FINISHED or _failed_collapsed(t)


def failure_limit(loop: "OptunaLoop") -> int:
    """The most failed trials a sweep goes on with."""
    return math.floor(loop.max_failure_rate * loop.n_trials)


def check_failures(loop: "OptunaLoop", study: optuna.Study, sweep_dir: Path) -> None:
    """Stop with one error line (finished trials kept) once more trials failed than the limit allows."""
    limit = failure_limit(loop)
    failed = loop.count(study, finished=False)
    if failed > limit:
        save_best(study, loop.storage, sweep_dir)
        done = len([t for t in loop.own(study) if not t.user_attrs.get("interrupted")])
        sys.exit(
            f"error: {failed} of {done} trials failed, more than max_failure_rate={loop.max_failure_rate} "
            f"of n_trials={loop.n_trials} allows ({limit}); the errors are in {sweep_dir / 'trials.jsonl'} "
            "and in each failed job's run.log"
        )


def build_sampler(node: Any) -> Any:
    """The Optuna sampler of `hydra.sweeper.sampler` (a grid's as a partial, built once the grid is known)."""
    if not isinstance(node, DictConfig | dict):
        return node
    from hydra.utils import instantiate

    try:
        return instantiate(node)
    except Exception as e:  # Hydra's message names the class on one line and the cause on the next
        said = " ".join(str(e).split())
        sys.exit(f"error: hydra.sweeper.sampler cannot be built ({said}); check its values")


def reseed(sampler: Any, seed: int | None, index: int) -> None:
    """Seed the sampler for the index-th fresh trial of a sweep directory from the sampler seed, so a resumed
    sweep draws what an uninterrupted one would (Optuna's samplers keep their generator in `_rng`, TPE's first
    trials come from its `_random_sampler`; a sampler without one, or an unseeded sweep, is left as it is)."""
    if seed is None:
        return
    for i, s in enumerate((sampler, getattr(sampler, "_random_sampler", None))):
        if s is not None and hasattr(s, "_rng"):
            s._rng.rng.seed(derive_seed(seed, f"trial-{index}-{i}") % 2**32)


def save_best(study: optuna.Study, storage: str, sweep_dir: Path) -> None:
    """optimization_results.yaml: the best trial so far; one error line when no trial completed."""
    summary = study_summary(study)
    out = {"name": "optuna", "study_name": study.study_name, "storage": redact(storage), **summary}
    OmegaConf.save(OmegaConf.create(out), sweep_dir / "optimization_results.yaml")
    if not summary["n_complete"]:
        sys.exit(f"error: no trial of study {study.study_name} completed; see {sweep_dir / 'trials.jsonl'}")
    log.info("Best trial %d: value %s, params %s", out["best_trial"], out["best_value"], out["best_params"])


def _checked_settings(kwargs: dict) -> Any:
    """The pruner (popped from the sweeper's settings) after checking storage, max_failure_rate and n_trials."""
    try:
        pruner = build_pruner(kwargs.pop("pruner", None))
    except DenetdmError as e:
        sys.exit(f"error: {e}")
    storage = kwargs.get("storage")
    if storage is not None and (not isinstance(storage, str) or not storage):
        sys.exit(
            f"error: hydra.sweeper.storage must be an Optuna URL, journal, journal:<file> or null, got {storage!r}"
        )
    rate, n_trials = kwargs.get("max_failure_rate"), kwargs.get("n_trials")
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate <= 1:
        sys.exit(f"error: hydra.sweeper.max_failure_rate must be a number in [0, 1], got {rate!r}")
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        sys.exit(f"error: hydra.sweeper.n_trials must be a positive integer, got {n_trials!r}")
    beat = kwargs.get("heartbeat_s")
    if beat is not None and (not isinstance(beat, int | float) or isinstance(beat, bool) or not beat >= 1):
        sys.exit(f"error: hydra.sweeper.heartbeat_s must be a number of seconds >= 1, or null for none, got {beat!r}")
    workers = kwargs.get("workers")
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
        sys.exit(f"error: hydra.sweeper.workers must be a positive number of worker jobs, or null, got {workers!r}")
    if not isinstance(kwargs.get("fail_collapsed", False), bool):
        sys.exit(f"error: hydra.sweeper.fail_collapsed must be true or false, got {kwargs['fail_collapsed']!r}")
    return pruner


@contextmanager
def only_sweep(sweep_dir: Path) -> Iterator[None]:
    """The sweep directory locked for this sweep; a second command on it is one error line."""
    try:
        with folder_lock(sweep_dir, "sweep", "hydra.sweep.dir"):
            yield
    except BusyError as e:
        sys.exit(f"error: {e}")


def recover(study: optuna.Study, lost: list) -> None:
    """Trials of this directory that their process left RUNNING (a killed sweep, a worker that died): marked FAIL
    with the reason, their values queued again (the retry's `retry_of` names the trial, its `resume` the run
    directory it resumes in)."""
    for t in lost:
        if t.state != optuna.trial.TrialState.RUNNING:
            continue
        handle = optuna.trial.Trial(study, t._trial_id)  # Optuna's handle on a trial that another process began
        handle.set_user_attr("interrupted", True)
        handle.set_user_attr("error", "left RUNNING by an interrupted sweep; tried again")
        if not t.params:  # killed before its values were drawn: the next fresh trial takes its place
            handle.set_user_attr("not_drawn", True)
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)  # attributes first: then it is final
        if t.params:
            study.enqueue_trial(t.params, user_attrs=retry_attrs(t))
            log.info("trial %d was left RUNNING by an interrupted sweep: tried again", t.number)


def tell(study: optuna.Study, trial: Any, twin: Any, ret: Any, fail_collapsed: bool = False) -> None:
    """Tell the study a trial's result, with its facts as user attributes: a repeat's from the trial it repeats
    (`twin`), a launched one's from its job return `ret`; with `fail_collapsed`, a trial whose stage 1 collapsed
    fails (so that the search does not optimise into collapse, nor report such a trial as its best)."""
    if twin is not None:
        value, error = twin.value, twin.user_attrs.get("error") if _failed_collapsed(twin) else None
        trial.set_user_attr("repeat_of", twin.number)
        log.info("trial %d repeats trial %d: its value %s is reused", trial.number, twin.number, value)
        if twin.state == optuna.trial.TrialState.PRUNED:  # it would be pruned at the same epoch again
            for step, v in sorted(twin.intermediate_values.items()):
                trial.report(v, step)
            error = _PRUNED_MARK
    else:
        value, error = _value(ret)
        facts = _trial_facts(ret, trial.params)
        for k, v in facts.items():
            trial.set_user_attr(k, v)
        if fail_collapsed and facts.get("collapsed") is True and error is None:
            error = (
                f"{COLLAPSED_ERROR} (stage1/collapse_signal {facts['collapse_signal']:.3f}); "
                "hydra.sweeper.fail_collapsed=true fails such trials"
            )
    if error == _PRUNED_MARK:
        log.info("trial %d was pruned", trial.number)
        if twin is None:  # the job reported through its own connection: read past the storage's cache
            backend = getattr(study._storage, "_backend", study._storage)
            for step, v in sorted(backend.get_trial(trial._trial_id).intermediate_values.items()):
                trial.report(v, step)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)  # its value: the last one it reported
        return
    if error is not None:
        trial.set_user_attr("error", error)
        log.warning("trial %d failed: %s", trial.number, error)
    state = _COMPLETE if error is None else optuna.trial.TrialState.FAIL
    study.tell(trial, value if error is None else None, state=state)


def write_trials(trials: list, study_name: str, path: Path) -> None:
    """trials.jsonl, rewritten from the study: a line per trial of this sweep directory, by number."""
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        row = {"number": t.number, "study": study_name, "params": t.params, "state": t.state.name, "value": t.value}
        row["error"] = redact(t.user_attrs["error"]) if t.user_attrs.get("error") else None
        # the facts this loop records (the plugin also keeps the command line's fixed values there)
        row |= {k: v for k, v in t.user_attrs.items() if k in TRIAL_FACTS}
        rows.append(row)
    JsonLines(path).write_all(rows)


def redact_hydra_files(sweep_dir: Path, storage: str) -> None:
    """Hydra saves the command line, a storage URL's password included, in multirun.yaml and each job's
    .hydra/hydra.yaml: replaced by *** after every batch (nothing is read when the URL has no password)."""
    if redact(storage) == storage:
        return
    for f in [sweep_dir / "multirun.yaml", *sweep_dir.glob("*/.hydra/*.yaml")]:
        text = f.read_text() if f.is_file() else ""
        if redact(text) != text:
            with atomic_write(f) as out:
                out.write(redact(text))


def _key(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def _params_override(params: dict) -> str:
    # the sampled values again as one dict, so the job's config (and W&B) can tell them from fixed overrides
    return (
        "trial.params={" + ",".join(f"{k}:{v!r}" if isinstance(v, str) else f"{k}:{v}" for k, v in params.items()) + "}"
    )


def _trial_facts(ret: Any, params: dict) -> dict:
    """What trials.jsonl adds to a launched trial: its stage-1 separation and collapse verdict (results.json) and
    whether it is an equal-depth control."""
    facts: dict = {}
    if params.get("model.shallow.depth") is not None and params.get("model.shallow.depth") == params.get(
        "model.deep.depth"
    ):
        facts["equal_depth"] = True
    try:
        results = json.loads((Path(ret.hydra_cfg.hydra.runtime.output_dir) / "results.json").read_text())
        for fact in ("separation", "collapsed", "collapse_signal"):
            if results.get(f"stage1/{fact}") is not None:
                facts[fact] = results[f"stage1/{fact}"]
    except Exception:  # a failed job has no results: its error is recorded instead
        pass
    return facts


def _failed_collapsed(t: Any) -> bool:
    """A trial failed by fail_collapsed: its run finished, so n_trials counts it and max_failure_rate does not."""
    return t.state == optuna.trial.TrialState.FAIL and str(t.user_attrs.get("error", "")).startswith(COLLAPSED_ERROR)


def _value(ret: Any) -> tuple[float | None, str | None]:
    # a failed job re-raises its exception here; a non-finite objective counts as a failure too
    try:
        value = float(ret.return_value)
    except Exception as e:
        if isinstance(e, TrialPruned):  # stopped by the pruner
            return None, _PRUNED_MARK
        return None, f"{type(e).__name__}: {e}".splitlines()[0]
    if not math.isfinite(value):
        return None, f"the objective is {value}"
    return value, None


def sweep_study(cfg: DictConfig, name: str | None, sweep_dir: Path) -> str:
    """The study's name (hydra.sweeper.study_name, else one per sweep), refused where the sweep directory holds
    another study's trials: its job directories are numbered by that study, another would reuse them."""
    name = name or default_study(
        cfg.hydra.runtime.choices.get("hparams_search"), cfg.dataset.name, cfg.experiment_name, str(sweep_dir)
    )
    if others := {r.get("study") for r in JsonLines(sweep_dir / "trials.jsonl").read()} - {name}:
        sys.exit(
            f"error: {sweep_dir} holds the trials of study {sorted(map(str, others))[0]}: resume it with "
            f"hydra.sweeper.study_name=<that name>, or run study {name} in a new hydra.sweep.dir"
        )
    return name


def trial_overrides(study: optuna.Study, own: list, trials: list, sampling: tuple, dists: dict, fixed: dict) -> list:
    """Each trial's job overrides (its sampled values, number and study); one error line if unsampleable.
    `own`: the sweep directory's trials; `sampling`: the sampler, its seed and the custom search space."""
    sampler, seed, extend = sampling
    # the fresh trials of this directory (not retries, not lost before sampling), in order: a trial's place among
    # them seeds the sampler for it
    fresh = [o.number for o in own if not {"retry_of", "not_drawn"} & set(o.user_attrs)]
    try:
        configured = []
        for t in trials:  # one at a time, the sampler seeded for each fresh trial
            if t.number in fresh:
                reseed(sampler, seed, sum(n <= t.number for n in fresh) - 1)
            configured.append(configure(t, dists, fixed, extend))
    except (DenetdmError, ValueError) as e:  # a space that cannot be sampled, or a fixed value in it
        for t in trials:  # not left RUNNING in a shared study
            study.tell(t, state=optuna.trial.TrialState.FAIL)
        hint = "; drop that override or narrow the search range instead" if "Overlapping" in str(e) else ""
        sys.exit(f"error: the search space cannot be sampled: {e}{hint}".replace("\n", " "))
    return [
        (*o, f"trial.number={t.number}", f"trial.study={study.study_name}", _params_override(t.params))
        for t, o in zip(trials, configured)
    ]


def repeats_of(study: optuna.Study, trials: list) -> dict:
    """Each trial's earlier finished trial of the same values, or None. A repeat (TPE often proposes one on small
    integer spaces) is answered from the study: the same config gives the same numbers."""
    known: dict[str, optuna.trial.FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False):
        if t.state in _FINISHED or _failed_collapsed(t):
            known.setdefault(_key(t.params), t)  # the first run of these values, not a repeat of it
    return {t.number: known.get(_key(t.params)) for t in trials}
