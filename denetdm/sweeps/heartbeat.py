"""Heartbeats for the trials a sweep runs, so that a worker killed mid-trial does not leave its trial RUNNING for
ever: while a batch runs, its sweeper records a heartbeat for each of its trials; before asking for new trials,
every worker fails the trials whose heartbeats stopped (`grace` = 3 intervals) and queues each one's values again,
once. A sweeper that asks and tells trials itself gets no heartbeats from Optuna (only `study.optimize` sends
them). Database servers only (Optuna's RDBStorage); a journal file or SQLite of one machine has a resuming sweep
instead (denetdm.sweeps.sweeper.recover).
"""

import logging
import threading
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import optuna
from optuna.storages._heartbeat import is_heartbeat_enabled  # Optuna 4.9 does not export it

log = logging.getLogger(__name__)
# Optuna warns that heartbeats belong to Study.optimize and that they are experimental: here the sweeper sends them
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning, message=".*(heartbeat|stale)")


def rdb_storage(url: str, every_s: float | None) -> Any:
    """The storage of a database server's URL, with heartbeats every `every_s` seconds; SQLite's, or with `every_s`
    None, the URL as Optuna opens it (SQLite serves one machine, where a beating thread would only contend for its
    lock)."""
    if every_s is None or url.startswith("sqlite"):
        return url
    return optuna.storages.RDBStorage(
        url,
        heartbeat_interval=max(1, round(every_s)),
        grace_period=max(1, round(3 * every_s)),
        failed_trial_callback=retry_once,
    )


def retry_once(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """A trial whose heartbeats stopped: its values queued again (the retry names it in `retry_of`), unless it
    was itself a retry."""
    if not trial.params or "retry_of" in trial.user_attrs:
        log.warning("trial %d stopped sending heartbeats (its worker is gone): failed, not retried", trial.number)
        return
    study.enqueue_trial(trial.params, user_attrs=retry_attrs(trial))
    log.warning("trial %d stopped sending heartbeats (its worker is gone): failed, and queued again", trial.number)


def retry_attrs(trial: optuna.trial.FrozenTrial) -> dict:
    """A lost trial's retry's user attributes: `retry_of`, and where it ran, `resume` ([its sweep directory, its
    job]), so that a worker of that directory resumes it in its run directory from the last checkpoint."""
    where, job = trial.user_attrs.get("sweep_dir"), trial.user_attrs.get("job")
    return {"retry_of": trial.number} | ({"resume": [where, job]} if where and job is not None else {})


def fail_stale(study: optuna.Study) -> None:
    """Fail (and queue again) the study's trials whose heartbeats stopped, where the storage keeps heartbeats."""
    if is_heartbeat_enabled(study._storage):
        optuna.storages.fail_stale_trials(study)


@contextmanager
def beating(study: optuna.Study, trials: Iterable[optuna.trial.Trial]) -> Iterator[None]:
    """Heartbeats for `trials` while the block runs (nothing where the storage keeps none)."""
    storage = study._storage
    if not is_heartbeat_enabled(storage):
        yield
        return
    ids, stop = [t._trial_id for t in trials], threading.Event()

    def beat() -> None:
        while True:
            for trial_id in ids:
                storage.record_heartbeat(trial_id)
            if stop.wait(storage.get_heartbeat_interval()):
                return

    thread = threading.Thread(target=beat, name="trial-heartbeats", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
