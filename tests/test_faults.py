"""Kills and damage, and what a rerun recovers: sweeps that survive a SIGKILL at any moment."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY, run_cli

SWEEP = ["-m", "hparams_search=depth_gap", "hydra.sweeper.n_trials=4", *TINY, "stage1.epochs=3", "stage2.epochs=2",
         "threads=1"]  # fmt: skip


def _trials(sweep_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (sweep_dir / "trials.jsonl").read_text().splitlines()]


def _sweep(sweep_dir: Path) -> None:
    proc = run_cli([*SWEEP, f"hydra.sweep.dir={sweep_dir}"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _epochs(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _kill_when(sweep_dir: Path, ready, timeout: float = 300) -> None:
    """Start the sweep and SIGKILL its whole process group once `ready()` holds."""
    cmd = [sys.executable, str(ROOT / "run.py"), *SWEEP, f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=os.environ.copy())  # fmt: skip
    t0 = time.time()
    while proc.poll() is None and not ready() and time.time() - t0 < timeout:
        time.sleep(0.02)
    assert proc.poll() is None, "the sweep ended before the kill point"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _complete(rows: list[dict]) -> dict[str, float]:
    return {json.dumps(r["params"], sort_keys=True): r["value"] for r in rows if r["state"] == "COMPLETE"}


# Kill points over a 4-trial sweep: (what is happening, when it is reached)
KILL_POINTS = {
    "study created, no trial run": lambda d: (d / "study.db").exists(),
    "trial 0 in stage 1": lambda d: _epochs(d / "0" / "metrics.jsonl") >= 1,
    "trial 1 in stage 2": lambda d: _epochs(d / "1" / "metrics.jsonl") >= 4,
    "between trials 1 and 2": lambda d: (d / "1" / "results.json").exists(),
    "trial 2 in stage 1": lambda d: _epochs(d / "2" / "metrics.jsonl") >= 2,
}


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], dict]:
    """The same sweep, never killed: its trials and optimization_results.yaml."""
    sweep = tmp_path_factory.mktemp("whole")
    _sweep(sweep)
    return _trials(sweep), yaml.safe_load((sweep / "optimization_results.yaml").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_sweep_killed_at_any_moment_reruns_to_the_uninterrupted_result(point, whole, tmp_path):
    killed = tmp_path / "killed"
    _kill_when(killed, lambda: KILL_POINTS[point](killed))
    _sweep(killed)
    rows = _trials(killed)
    assert sum(r["state"] == "COMPLETE" for r in rows) == 4 and len({r["number"] for r in rows}) == len(rows)
    for lost in [r for r in rows if r.get("interrupted")]:
        assert lost["state"] == "FAIL" and "interrupted" in lost["error"]
        if lost.get("not_drawn"):  # killed before its values were drawn: nothing to try again
            assert lost["params"] == {} and not [r for r in rows if r.get("retry_of") == lost["number"]]
            continue
        (retry,) = [r for r in rows if r.get("retry_of") == lost["number"]]
        assert retry["state"] == "COMPLETE" and retry["params"] == lost["params"]
        if "job" not in lost:  # killed between asking for the trial and launching it: no run directory yet
            continue
        assert retry["job"] == lost["job"]
        # it resumed in its own run directory: every finished epoch is there once
        lines = (killed / str(lost["job"]) / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == len({(json.loads(x)["stage"], json.loads(x)["epoch"]) for x in lines}) == 3 + 2
    if point.startswith("trial"):
        assert any(r.get("interrupted") for r in rows)
    # the same trials and numbers as the sweep that was never killed, so the same best value
    assert _complete(rows) == _complete(whole[0])
    assert yaml.safe_load((killed / "optimization_results.yaml").read_text())["best_value"] == whole[1]["best_value"]


@pytest.mark.slow
def test_rerunning_a_finished_sweep_trains_nothing_and_a_larger_n_trials_adds_only_the_missing(tmp_path):
    sweep = tmp_path / "s"
    _sweep(sweep)
    first = _trials(sweep)
    jobs = sorted(p.name for p in sweep.iterdir() if p.name.isdigit())
    _sweep(sweep)  # the same command again
    assert _trials(sweep) == first and sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == jobs
    proc = run_cli([*SWEEP, "hydra.sweeper.n_trials=6", f"hydra.sweep.dir={sweep}"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = _trials(sweep)
    assert sum(r["state"] == "COMPLETE" for r in rows) == 6 and rows[: len(first)] == first
    launched = [r["job"] for r in rows if "job" in r]
    assert len(launched) == len(set(launched))  # every launched trial has its own run directory


@pytest.mark.slow
def test_a_pruned_trial_stops_after_its_checkpoint_and_is_recorded_as_pruned(tmp_path):
    sweep = tmp_path / "p"
    pruner = "hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,lower:1.5}"  # prunes every report
    args = ["-m", "hparams_search=depth_gap", "hydra.sweeper.n_trials=2", *TINY, "stage2.epochs=3", pruner]
    proc = run_cli([*args, f"hydra.sweep.dir={sweep}"], timeout=600)
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no trial of study")  # none COMPLETE, one line
    rows = _trials(sweep)
    assert [r["state"] for r in rows] == ["PRUNED", "PRUNED"] and all("error" not in r or not r["error"] for r in rows)
    assert all(isinstance(r["value"], float) for r in rows)  # the last value the job reported
    job = sweep / str(rows[0]["job"])
    note = json.loads((job / "pruned.json").read_text())
    assert note["phase"] == "stage2" and note["epoch"] == 1 and note["key"] == "stage2/target/val/acc_unbiased"
    assert not (job / "results.json").exists() and (job / "checkpoints" / "stage2_last.pt").exists()
    assert "trial pruned" in (job / "run.log").read_text()
    from denetdm.runs import collect

    assert all(reason.startswith("pruned after epoch 1 of stage2") for _, reason in collect([sweep]).incomplete)
    # a bad pruner is one error line before anything runs
    proc = run_cli([*args[:-1], "hydra.sweeper.pruner=sometimes", f"hydra.sweep.dir={tmp_path / 'bad'}"])
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1].startswith("error: hydra.sweeper.pruner")


def test_a_trial_killed_before_its_values_were_drawn_is_failed_and_not_retried(tmp_path):
    import optuna

    sweep = tmp_path / "s"
    sweep.mkdir()
    storage = f"sqlite:///{(sweep / 'study.db').resolve()}"
    study = optuna.create_study(study_name="depth_gap-synthetic", storage=storage, direction="maximize")
    lost = study.ask()  # asked, then killed before its depths were sampled: RUNNING without params
    lost.set_user_attr("sweep_dir", str(sweep.resolve()))
    proc = run_cli(["-m", "hparams_search=depth_gap", "hydra.sweeper.n_trials=2", *TINY, "stage1.epochs=1",
                    "stage2.epochs=1", f"hydra.sweep.dir={sweep}"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = _trials(sweep)
    assert rows[0]["number"] == lost.number and rows[0]["state"] == "FAIL" and rows[0]["not_drawn"]
    assert [r["state"] for r in rows[1:]] == ["COMPLETE", "COMPLETE"] and not any("retry_of" in r for r in rows)


def test_a_second_process_on_a_run_directory_stops_with_one_line_and_a_dead_one_leaves_no_lock(tmp_path):
    import fcntl

    from denetdm.errors import BusyError
    from denetdm.pipeline import train

    from conftest import compose_cfg

    run = tmp_path / "r"
    run.mkdir()
    with open(run / ".lock", "a+") as held:  # another process training there
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("process 12345")
        held.flush()
        with pytest.raises(BusyError, match="in use by process 12345"):
            train(compose_cfg(TINY), run)
        proc = run_cli(TINY, run)
        assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith(f"error: {run} is in use")
    # a holder killed with SIGKILL: the kernel drops its lock, so the run goes ahead
    code = f"import fcntl, time; f = open({str(run / '.lock')!r}, 'a+'); fcntl.flock(f, fcntl.LOCK_EX); " \
           "print('locked', flush=True); time.sleep(60)"  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait()
    assert train(compose_cfg(TINY), run)["stages"] == ["stage1", "stage2"]


@pytest.mark.slow
def test_wandb_online_with_an_unreachable_server_costs_one_warning_not_a_hang(tmp_path):
    env = {"WANDB_MODE": "online", "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_API_KEY": "0" * 40}
    args = [*[a for a in TINY if not a.startswith("logger")], "logger=wandb", "logger.init_timeout=5"]
    t0 = time.time()
    proc = run_cli(args, tmp_path / "r", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert time.time() - t0 < 60  # W&B's own wait would be 90 s
    assert (tmp_path / "r" / "results.json").exists()  # training went on, files written
    assert (proc.stdout + proc.stderr).count("W&B logging is off for this run") == 1
