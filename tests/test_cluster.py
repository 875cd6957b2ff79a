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
def test_a_requeued_job_resumes_its_trial_to_the_numbers_of_an_uninterrupted_run(tmp_path):
    env = _services()
    args = [*TINY_SWEEP, "dataset.train_size=6000", "experts.epochs=12", "target.epochs=2", "hydra.sweeper.n_trials=1"]
    args = [a for a in args if a != "logger=none"] + ["logger=wandb"]  # offline: one W&B run, not two
    penv = {**os.environ, **env, "WANDB_MODE": "offline"}
    cmd = [sys.executable, str(ROOT / "run.py"), *args]
    sweep = subprocess.Popen([*cmd, f"hydra.sweep.dir={tmp_path / 'a'}"], cwd=ROOT, env=penv, stdout=subprocess.DEVNULL)
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
