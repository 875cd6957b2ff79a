"""How a sweep runs its trials: in batches of n_jobs, each launched once the one before it has ended, or in worker
mode (`hydra.sweeper.workers=N`): N jobs that each take the sweep's next trial from the study as soon as their
last one ended, so that no job waits for a batch's slowest trial. The sweep's n_trials are one budget for all
workers; a worker that SLURM starts again (a requeue, a preemption) adopts the trial it was running, which resumes
from its run directory's last checkpoint.
"""

import logging
import sys
import time
from pathlib import Path
from typing import Any

import optuna

from denetdm.sweeps.heartbeat import beating, fail_stale
from denetdm.sweeps.sweeper import (
    OptunaLoop,
    counted,
    create_or_load_study,
    failure_limit,
    recover,
    repeats_of,
    tell,
)

log = logging.getLogger(__name__)
_RUNNING = optuna.trial.TrialState.RUNNING


def batches(loop: OptunaLoop, study: optuna.Study, dists: dict, fixed: dict, sweep_dir: Path) -> None:
    """Batches of n_jobs trials until the sweep's n_trials are finished."""
    while (left := loop.n_trials - loop.count(study, finished=True)) > 0:
        fail_stale(study)  # another worker's trials whose heartbeats stopped: failed, their values queued again
        trials = [loop.ask(study) for _ in range(min(loop.n_jobs, left))]
        run_batch(loop, study, trials, loop.overrides(study, trials, dists, fixed))
        loop.after_batch(study, sweep_dir)


def rounds(loop: OptunaLoop, study: optuna.Study, dists: dict, fixed: dict, sweep_dir: Path) -> None:
    """Rounds of `loop.workers` worker jobs until the sweep's n_trials are finished: another round only for the
    trials that failed, or whose worker died, once every worker of a round had ended."""
    while (left := loop.n_trials - loop.count(study, finished=True)) > 0:
        worker = Worker(loop, study.study_name, study.direction.name.lower(), dists, fixed)
        outs = loop.launcher.run_workers(worker, min(loop.workers, left))
        for i, out in enumerate(outs):
            said = out if isinstance(out, dict) else f"ended with {type(out).__name__}: {out}".splitlines()[0]
            log.info("worker %d: %s", i, said)
        recover(study, loop.own(study))  # every worker has ended: a trial still RUNNING lost its worker
        loop.after_batch(study, sweep_dir)
        if not any(isinstance(out, dict) and out["trials"] for out in outs):
            sys.exit(f"error: no worker of this round ran a trial ({outs[0]}); see {sweep_dir / '.submitit'}")


def launch(loop: OptunaLoop, todo: list[tuple]) -> dict[int, Any]:
    """Launch the trials; a retry of this directory's trial in its run directory (resumed from its last
    checkpoint), the rest in new ones."""
    returns: dict[int, Any] = {}
    fresh = []
    for t, o in todo:
        where, job = t.user_attrs.get("resume") or (None, None)
        if where != loop.sweep_key:
            fresh.append((t, o))
            continue
        t.set_user_attr("job", job)
        returns[t.number] = loop.launcher.launch([o], job)[0]
    for i, (t, _) in enumerate(fresh):  # before launching: a kill leaves the trial's run directory known
        t.set_user_attr("job", loop.job_idx + i)
    if fresh:
        for t, ret in zip([t for t, _ in fresh], loop.launcher.launch([o for _, o in fresh], loop.job_idx)):
            returns[t.number] = ret
        loop.job_idx += len(fresh)
    return returns


def run_batch(loop: OptunaLoop, study: optuna.Study, trials: list, overrides: list[tuple]) -> None:
    """Launch the trials that are not repeats and tell the study every result, with its facts as user
    attributes (error, repeat_of, separation, equal_depth)."""
    repeats = repeats_of(study, trials)
    with beating(study, trials):
        returns = launch(loop, [(t, o) for t, o in zip(trials, overrides) if repeats[t.number] is None])
    for trial in trials:
        tell(study, trial, repeats[trial.number], returns.get(trial.number), loop.fail_collapsed)


class Worker:
    """What a worker job runs (pickled into it with the sweep's loop): trial after trial."""

    def __init__(self, loop: OptunaLoop, study: str, direction: str, dists: dict, fixed: dict) -> None:
        self.loop, self.study, self.direction, self.dists, self.fixed = loop, study, direction, dists, fixed

    def __call__(self, launcher: Any) -> dict:
        """In the job: trials run by `launcher` in this process until the sweep's n_trials are finished or
        running, or too many failed; this worker's trials and busy seconds."""
        loop = self.loop
        loop.launcher = launcher
        study = create_or_load_study(
            self.study, loop.storage, loop.sampler, self.direction, loop.pruner, loop.heartbeat_s
        )
        me = launcher.worker_id  # SLURM's job id: the same when SLURM starts this job again
        mine = [t for t in loop.own(study) if t.state == _RUNNING and t.user_attrs.get("worker") == me]
        start, busy, ran = time.monotonic(), 0.0, 0
        while (trial := self._adopt(study, mine.pop()) if mine else self._claim(study, me)) is not None:
            begun = time.monotonic()
            loop.job_idx = trial.number  # a fresh trial's run directory: workers number their trials apart
            run_batch(loop, study, [trial], loop.overrides(study, [trial], self.dists, self.fixed))
            busy, ran = busy + time.monotonic() - begun, ran + 1
        alive = time.monotonic() - start
        return {"worker": me, "trials": ran, "busy_s": round(busy, 1), "alive_s": round(alive, 1)}

    def _adopt(self, study: optuna.Study, lost: Any) -> Any:
        """A trial this worker ran before SLURM stopped its job: the same trial, resumed in its run directory."""
        trial = optuna.trial.Trial(study, lost._trial_id)  # Optuna's handle on a trial begun by another process
        if "job" in lost.user_attrs:
            trial.set_user_attr("resume", [self.loop.sweep_key, lost.user_attrs["job"]])
        log.info("trial %d: its worker's job was started again; resuming it", lost.number)
        return trial

    def _claim(self, study: optuna.Study, me: str) -> Any:
        """The next trial, or None once the sweep's trials finished or running reach n_trials, or more failed
        than max_failure_rate allows. Workers ask at once: a trial asked when n_trials earlier ones had been
        taken is given up (failed as not drawn)."""
        loop = self.loop
        fail_stale(study)  # trials whose heartbeats stopped: failed, their values queued again
        if loop.count(study, finished=False) > failure_limit(loop):
            return None
        if len(taken(loop.own(study))) >= loop.n_trials:
            return None
        trial = loop.ask(study)
        trial.set_user_attr("worker", me)
        if sum(t.number < trial.number for t in taken(loop.own(study))) < loop.n_trials:
            return trial
        for key, value in (("interrupted", True), ("not_drawn", True), ("error", "not run: n_trials were taken")):
            trial.set_user_attr(key, value)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return None


def taken(own: list) -> list:
    """The sweep directory's trials that n_trials counts, finished or running."""
    live = [t for t in own if not t.user_attrs.get("interrupted")]
    return [t for t in live if t.state == _RUNNING or counted(t)]
