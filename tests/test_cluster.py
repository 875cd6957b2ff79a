"""Sweeps on a real SLURM cluster into a real PostgreSQL study: the test services of `make cluster-up`
(tests/cluster/up.sh: a controller and nodes n1, n2 on this host, a PostgreSQL server), read from
$CLUSTER_DIR/env.sh; skipped with the reason where they are not up. The checks that need neither run anywhere."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from denetdm.errors import ConfigError

from conftest import ROOT, TINY, run_cli

CLUSTER_DIR = Path(os.environ.get("CLUSTER_DIR", "/tmp/denetdm-cluster"))
TINY_SWEEP = ["-m", "hparams_search=depth_gap", "launcher=slurm", *TINY]


def _services(slurm: bool = True) -> dict:
    """The environment of the test services (SLURM_CONF, the PostgreSQL URL and password), or a skip."""
    env_sh = CLUSTER_DIR / "env.sh"
    if not env_sh.exists():
        pytest.skip(f"no test cluster: run `make cluster-up` first ({env_sh} is absent)")
    env = dict(re.findall(r"^export (\w+)=(.*)$", env_sh.read_text(), re.M))
    if not slurm:
        return env
    try:
        up = subprocess.run(["sinfo", "-h", "-o", "%T"], env={**os.environ, **env}, capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        up = None
    if up is None or up.returncode != 0:
        pytest.skip(f"the test cluster of {env_sh} does not answer (sinfo): run `make cluster-up` again")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="launcher=slurm: make install-launchers")
    return env


def _allocations(job_id: str) -> set[str]:
    """The nodes the controller's log says the array job `job_id` ran on."""
    log = (CLUSTER_DIR / "slurmctld.log").read_text()
    return set(re.findall(rf"Allocate JobId={job_id}_\d+\(\d+\) NodeList=(\w+)", log))


@pytest.mark.slow
def test_a_depth_gap_sweep_runs_on_both_nodes_into_one_postgresql_study(tmp_path):
    env = _services()
    password = env.pop("DENETDM_TEST_PG_PASSWORD")
    study, url = f"cluster-{uuid.uuid4().hex[:8]}", env["DENETDM_TEST_PG"]
    args = [*TINY_SWEEP, "hydra.sweeper.n_trials=4", "hydra.launcher.array_parallelism=2"]
    args += [f"hydra.sweeper.storage={url}", f"hydra.sweeper.study_name={study}", f"hydra.sweep.dir={tmp_path}"]
    proc = run_cli(args, env={**env, "PGPASSWORD": password}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = _load_trials({**env, "DENETDM_TEST_PG_PASSWORD": password}, study)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    jobs = {p.name.split("_")[0] for p in (tmp_path / ".submitit").iterdir() if "_" in p.name}
    assert set().union(*map(_allocations, jobs)) == {"n1", "n2"}  # two at a time: one on each node
    for path in tmp_path.rglob("*"):  # the password is in no file of the sweep
        assert not path.is_file() or password.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_a_job_the_cluster_refuses_is_one_line(tmp_path):
    env = _services()
    args = [*TINY_SWEEP, "hydra.sweeper.n_trials=1", "hydra.launcher.partition=nosuch", f"hydra.sweep.dir={tmp_path}"]
    proc = run_cli(args, env=env, timeout=120)
    ours = [line for line in proc.stderr.splitlines() if not line.startswith("sbatch: ")]  # sbatch says its own
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert ours[-1].startswith("error: the cluster refused the job (invalid partition specified: nosuch"), ours


def test_without_sbatch_launcher_slurm_is_one_line_before_hydra_starts(monkeypatch, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="launcher=slurm: make install-launchers")
    from denetdm.cli import check_launcher

    monkeypatch.setenv("PATH", str(tmp_path))
    assert check_launcher(["-m", "launcher=slurm"]).startswith("error: launcher=slurm submits its trials with sbatch")


def test_sqlite_is_refused_for_trials_on_a_cluster_and_the_journal_is_their_default(tmp_path):
    from denetdm.sweeps.pruning import check_storage, study_storage

    slurm = "hydra_plugins.denetdm_slurm.slurm_launcher.DenetdmSlurmLauncher"
    with pytest.raises(ConfigError, match="SQLite's file locks do not hold on the network filesystems"):
        check_storage("sqlite:///study.db", cluster=True)
    check_storage("sqlite:///study.db")  # one machine: fine
    assert study_storage(None, tmp_path, slurm) == f"journal:{tmp_path.resolve() / 'study.journal'}"
    assert study_storage(None, tmp_path, "hydra._internal.core_plugins.basic_launcher.BasicLauncher").startswith(
        "sqlite:///"
    )


def _load_trials(env: dict, study: str) -> list:
    import optuna

    os.environ["PGPASSWORD"] = env["DENETDM_TEST_PG_PASSWORD"]  # libpq reads it; the URL holds none
    try:
        return optuna.load_study(study_name=study, storage=env["DENETDM_TEST_PG"]).trials
    finally:
        del os.environ["PGPASSWORD"]


@pytest.mark.slow
def test_a_worker_killed_mid_trial_leaves_no_trial_running_for_ever(tmp_path):
    env = _services(slurm=False)
    study = f"killed-{uuid.uuid4().hex[:8]}"
    args = [sys.executable, str(ROOT / "run.py"), "-m", "hparams_search=depth_gap", *TINY, "experts.epochs=20"]
    args += [f"hydra.sweeper.storage={env['DENETDM_TEST_PG']}", f"hydra.sweeper.study_name={study}"]
    args += ["hydra.sweeper.heartbeat_s=1"]  # stale after 3 s without one
    penv = {**os.environ, "PGPASSWORD": env["DENETDM_TEST_PG_PASSWORD"], "WANDB_MODE": "disabled"}
    a = subprocess.Popen([*args, "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={tmp_path / 'a'}"], cwd=ROOT, env=penv)
    deadline = time.monotonic() + 120
    while not (tmp_path / "a" / "0" / "metrics.jsonl").exists():  # its trial has trained an epoch
        assert a.poll() is None and time.monotonic() < deadline, "worker a ended before its first epoch"
        time.sleep(0.2)
    a.send_signal(signal.SIGKILL)
    a.wait()
    time.sleep(4)
    b = subprocess.run(
        [*args, "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path / 'b'}"],
        cwd=ROOT,
        env=penv,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert b.returncode == 0, b.stderr[-3000:]
    trials = _load_trials(env, study)
    lost = trials[0]
    assert lost.state.name == "FAIL" and f"trial {lost.number} stopped sending heartbeats" in b.stdout + b.stderr
    retry = [t for t in trials if t.user_attrs.get("retry_of") == lost.number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].params == lost.params
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE", "FAIL"]


@pytest.mark.slow
def test_a_server_that_refuses_the_password_is_one_line(tmp_path):
    env = _services(slurm=False)
    args = ["-m", "hparams_search=depth_gap", *TINY, f"hydra.sweeper.storage={env['DENETDM_TEST_PG']}"]
    proc = run_cli([*args, f"hydra.sweep.dir={tmp_path}"], env={"PGPASSWORD": "not-it"}, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: the study storage postgresql+psycopg://denetdm@") and "PGPASSWORD" in line, line


@pytest.mark.slow
@pytest.mark.parametrize("mode", [[], ["hydra.sweeper.workers=1"]], ids=["batches", "workers"])
def test_a_requeued_job_resumes_its_trial_to_the_numbers_of_an_uninterrupted_run(tmp_path, mode):
    env = _services()
    args = [*TINY_SWEEP, "dataset.train_size=6000", "experts.epochs=12", "target.epochs=2", "hydra.sweeper.n_trials=1"]
    args = [a for a in args if a != "logger=none"] + ["logger=wandb"]  # offline: one W&B run, not two
    penv = {**os.environ, **env, "WANDB_MODE": "offline"}
    cmd = [sys.executable, str(ROOT / "run.py"), *args]
    a = [*cmd, *mode, f"hydra.sweep.dir={tmp_path / 'a'}"]  # a worker started again adopts its trial
    sweep = subprocess.Popen(a, cwd=ROOT, env=penv, stdout=subprocess.DEVNULL)
    metrics, deadline = tmp_path / "a" / "0" / "metrics.jsonl", time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert sweep.poll() is None and time.monotonic() < deadline, "the trial ended before its third epoch"
        time.sleep(0.2)
    (job,) = [p.name for p in (tmp_path / "a" / ".submitit").iterdir() if p.name.isdigit()]
    subprocess.run(["scontrol", "requeue", job], env=penv, check=True)  # SLURM starts it again after ~2 minutes
    assert sweep.wait(timeout=600) == 0
    plain = subprocess.run([*cmd, f"hydra.sweep.dir={tmp_path / 'b'}"], cwd=ROOT, env=penv, capture_output=True)
    assert plain.returncode == 0, plain.stderr[-3000:]
    run, twin = tmp_path / "a" / "0", tmp_path / "b" / "0"
    assert "stage1: resuming after epoch" in (run / "run.log").read_text()
    epochs = [(r["stage"], r["epoch"]) for r in map(json.loads, metrics.read_text().splitlines())]
    assert len(epochs) == len(set(epochs)) == 14  # each epoch recorded once: none trained twice
    ours, theirs = (json.loads((d / "results.json").read_text()) for d in (run, twin))
    numbers = [k for k, v in ours.items() if "/" in k and not k.startswith("time/") and isinstance(v, float)]
    assert numbers and all(ours[k] == theirs[k] for k in numbers)
    assert [json.loads(line)["number"] for line in (tmp_path / "a" / "trials.jsonl").read_text().splitlines()] == [0]
    ids = {p.name.rsplit("-", 1)[-1] for p in (run / "wandb").glob("offline-run-*")}
    assert len(ids) == 1  # the resumed job went on with the same W&B run


WORKERS = ["-m", "hydra/sweeper=denetdm_optuna", "hydra/sweeper/sampler=grid", "launcher=slurm"]
WORKERS += [*(a for a in TINY if not a.startswith("experts.epochs=")), "hydra.sweeper.sampler.seed=0"]
WORKERS += ["hydra.sweeper.direction=maximize", "target.epochs=1"]


@pytest.mark.slow
def test_worker_jobs_take_the_next_trial_as_they_free_up_within_one_budget(tmp_path):
    env = _services()
    # seeded, the grid asks 60 epochs first, then 3, 2, 1: one worker trains the long trial while the other
    # takes the three short ones, each as soon as its last one ended (batches would wait for the long one)
    args = [*WORKERS, "experts.epochs=1,2,60,3", "hydra.sweeper.n_trials=4", "hydra.sweeper.workers=2"]
    proc = run_cli([*args, f"hydra.sweep.dir={tmp_path}"], env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = _journal_trials(tmp_path)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4  # n_trials shared: four trials, not one more
    long, *short = sorted(trials, key=lambda t: -t.params["experts.epochs"])
    assert long.params["experts.epochs"] == 60 and all(t.datetime_start < long.datetime_complete for t in short)
    assert {t.user_attrs["worker"] for t in short} != {long.user_attrs["worker"]}
    assert all(t.user_attrs["job"] == t.number and (tmp_path / str(t.number) / "results.json").exists() for t in trials)
    (job,) = [p.name for p in (tmp_path / ".submitit").iterdir() if p.name.isdigit()]
    assert _allocations(job) == {"n1", "n2"}  # one submission: two worker jobs, one on each node


@pytest.mark.slow
def test_a_stacked_cluster_sweep_sends_one_job_per_setting(tmp_path):
    env = _services()
    args = ["-m", "launcher=slurm", *TINY, "seed=0,1", "model.deep.depth=4,5", "hydra.launcher.stack=true"]
    proc = run_cli([*args, f"hydra.sweep.dir={tmp_path}"], env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (job,) = [p.name for p in (tmp_path / ".submitit").iterdir() if p.name.isdigit()]
    tasks = sorted(p.name for p in (tmp_path / ".submitit").iterdir() if p.name.startswith(f"{job}_"))
    assert tasks == [f"{job}_0", f"{job}_1"]  # four runs, two settings: two jobs
    stacks = {tuple(json.loads((tmp_path / str(i) / "stack.json").read_text())["members"]) for i in range(4)}
    depths = [{_config(Path(m))["model"]["deep"]["depth"] for m in members} for members in stacks]
    assert sorted(map(len, stacks)) == [2, 2] and sorted(map(sorted, depths)) == [[4], [5]]  # a setting, two seeds
    assert all(json.loads((tmp_path / str(i) / "results.json").read_text()) for i in range(4))


def test_bad_values_of_the_cluster_keys_are_one_line(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="launcher=slurm: make install-launchers")
    from denetdm.sweeps.sweeper import _checked_settings
    from hydra_plugins.denetdm_slurm.slurm_launcher import DenetdmSlurmLauncher

    for workers in (0, -1, 1.5, True, "two"):
        with pytest.raises(SystemExit, match="hydra.sweeper.workers must be a positive number of worker jobs"):
            _checked_settings({"storage": None, "max_failure_rate": 0.5, "n_trials": 2, "workers": workers})
    with pytest.raises(SystemExit, match="hydra.launcher.stack must be true or false, got 'yes'"):
        DenetdmSlurmLauncher(stack="yes")
    with pytest.raises(SystemExit, match="hydra.launcher.max_members must be a positive integer"):
        DenetdmSlurmLauncher(stack=True, max_members=0)
    proc = run_cli(["-m", "hparams_search=depth_gap", *TINY, "hydra.sweeper.workers=2", f"hydra.sweep.dir={tmp_path}"])
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: hydra.sweeper.workers=2 starts worker jobs on a")


def _journal_trials(sweep: Path) -> list:
    import optuna

    backend = optuna.storages.journal.JournalFileBackend(str(sweep / "study.journal"))
    return optuna.load_study(study_name=None, storage=optuna.storages.JournalStorage(backend)).trials


def _config(run: Path) -> dict:
    import yaml

    return yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
