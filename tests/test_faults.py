"""Kills and damage, and what a rerun recovers: sweeps that survive a SIGKILL at any moment."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from denetdm.cli import missing_plugin
from denetdm.files.jsonlines import parse_line

from conftest import ROOT, TINY, run_cli

SWEEP = [
    "-m",
    "hparams_search=depth_gap",
    "hydra.sweeper.n_trials=4",
    *TINY,
    "experts.epochs=3",
    "target.epochs=2",
    "threads=1",
]


def _trials(sweep_dir: Path) -> list[dict]:
    return [parse_line(line) for line in (sweep_dir / "trials.jsonl").read_text().splitlines()]


def _sweep(sweep_dir: Path) -> None:
    proc = run_cli([*SWEEP, f"hydra.sweep.dir={sweep_dir}"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _epochs(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _kill_when(sweep_dir: Path, ready, timeout: float = 300) -> None:
    """Start the sweep and SIGKILL its whole process group once `ready()` holds."""
    cmd = [sys.executable, str(ROOT / "run.py"), *SWEEP, f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=os.environ.copy(),
    )
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


JOBLIB = pytest.mark.skipif(bool(missing_plugin("joblib")), reason="optional hydra-joblib-launcher not installed")


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher",
    [
        ["hparams_search=depth_gap"],
        pytest.param(["hparams_search=depth_gap", "launcher=joblib"], marks=JOBLIB, id="joblib"),
        pytest.param(["hparams_search=distill", "launcher=stacked", "hydra.sweeper.n_jobs=2"], id="stacked"),
    ],
)
def test_a_pruned_trial_stops_after_its_checkpoint_and_is_recorded_as_pruned(launcher, tmp_path):
    # with launcher=joblib the job runs in another process and reaches its trial through the study's storage; with
    # launcher=stacked the two trials train as one stack, each member reporting to its own trial
    sweep = tmp_path / "p"
    pruner = "hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,lower:1.5}"  # prunes every report
    args = ["-m", "hydra.sweeper.n_trials=2", *TINY, "target.epochs=3", pruner, *launcher]
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
    assert ("launcher=stacked" in launcher) == (job / "stack.json").exists()
    from denetdm.reporting.runs import collect

    assert all(reason.startswith("pruned after epoch 1 of stage2") for _, reason in collect([sweep]).incomplete)
    # a bad pruner is one error line before anything runs
    proc = run_cli(
        [*(a for a in args if a != pruner), "hydra.sweeper.pruner=sometimes", f"hydra.sweep.dir={tmp_path / 'bad'}"]
    )
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1].startswith("error: hydra.sweeper.pruner")


@pytest.mark.slow
def test_a_second_sweep_command_on_a_live_sweep_is_one_line_and_the_first_finishes_untouched(tmp_path):
    cmd = [sys.executable, str(ROOT / "run.py"), *SWEEP, "experts.epochs=40", f"hydra.sweep.dir={tmp_path}"]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while _epochs(tmp_path / "0" / "metrics.jsonl") < 1 and time.time() - t0 < 300:  # trial 0 is training
        time.sleep(0.05)
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)  # the resume command
    assert first.poll() is None, "the first sweep ended before the second command ran"
    (line,) = second.stderr.strip().splitlines()
    assert second.returncode == 1 and line.startswith(f"error: {tmp_path} is in use by process {first.pid} (sweep)")
    assert first.wait(timeout=600) == 0
    rows = _trials(tmp_path)  # no trial of the live sweep was failed, no job number reused
    assert [r["state"] for r in rows] == ["COMPLETE"] * 4 and sorted(r["job"] for r in rows) == [0, 1, 2, 3]


@pytest.mark.slow
def test_a_damaged_study_db_is_one_line_naming_it(tmp_path):
    (tmp_path / "study.db").write_bytes(os.urandom(5000))
    proc = run_cli([*SWEEP, f"hydra.sweep.dir={tmp_path}"])
    (line,) = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and line.startswith("error: the study storage") and "study.db" in line
    assert "file is not a database" in line and "raced" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_trial_killed_before_its_values_were_drawn_is_failed_and_not_retried(tmp_path):
    import optuna

    sweep = tmp_path / "s"
    sweep.mkdir()
    storage = f"sqlite:///{(sweep / 'study.db').resolve()}"
    # the sweep's own study (named after its directory), as a killed run of this sweep left it
    study = optuna.create_study(study_name="depth_gap-synthetic-s", storage=storage, direction="maximize")
    lost = study.ask()  # asked, then killed before its depths were sampled: RUNNING without params
    lost.set_user_attr("sweep_dir", str(sweep.resolve()))
    proc = run_cli(
        [
            "-m",
            "hparams_search=depth_gap",
            "hydra.sweeper.n_trials=2",
            *TINY,
            "experts.epochs=1",
            "target.epochs=1",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = _trials(sweep)
    assert rows[0]["number"] == lost.number and rows[0]["state"] == "FAIL" and rows[0]["not_drawn"]
    assert [r["state"] for r in rows[1:]] == ["COMPLETE", "COMPLETE"] and not any("retry_of" in r for r in rows)


@pytest.mark.slow
def test_a_second_process_on_a_run_directory_stops_with_one_line_and_a_dead_one_leaves_no_lock(tmp_path):
    import fcntl

    from denetdm.errors import BusyError
    from denetdm.training.pipeline import train

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
    code = (
        f"import fcntl, time; f = open({str(run / '.lock')!r}, 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
        "print('locked', flush=True); time.sleep(60)"
    )
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


# --- one run killed at the moments a sweep's kill points do not reach, then run again -------------------------------

RUN = [*TINY, "experts.epochs=3", "target.epochs=3", "threads=1"]


def _run_with_fault(fault: str, run_dir: Path, cache: Path) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        str(ROOT / "tests" / "faultinject.py"),
        fault,
        str(ROOT / "run.py"),
        *RUN,
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "DENETDM_CACHE": str(cache)}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _numbers(run_dir: Path) -> tuple[list[dict], dict]:
    """metrics.jsonl and results.json without wall-clock entries."""
    lines = [parse_line(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((run_dir / "results.json").read_text())
    drop = lambda d: {k: v for k, v in d.items() if "time" not in k and k != "config"}  # noqa: E731 (its cache_dir)
    return [drop(x) for x in lines], drop(results)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], dict]:
    """The run never interrupted, with a cache of its own."""
    root = tmp_path_factory.mktemp("plain")
    proc = run_cli(RUN, root / "run", env={"DENETDM_CACHE": str(root / "cache")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return _numbers(root / "run")


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault",
    [
        "kill-after-generating",  # the dataset generated, its cache file not yet written
        "kill-mid-write:synthetic-",  # half of the cache file written
        "kill-mid-write:stage1_last.pt:2",  # half of epoch 2's checkpoint written
        "kill-mid-write:stage2_selected.pt",  # half of stage 2's first selected checkpoint written
        "kill-at-stage:stage2",  # between the stages
        "kill-after-epoch:stage2:2",  # during stage 2
    ],
)
def test_a_run_killed_at_any_moment_reruns_to_the_uninterrupted_numbers(fault, plain, tmp_path):
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    proc = _run_with_fault(fault, run_dir, cache)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (run_dir / "results.json").exists()
    rerun = run_cli(RUN, run_dir, env={"DENETDM_CACHE": str(cache)})
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "damaged" not in rerun.stdout + rerun.stderr  # a half-written file is never where a reader looks
    assert _numbers(run_dir) == plain
    assert len(list(cache.glob("synthetic-*.pt"))) == 1


@pytest.mark.slow
def test_a_kill_between_the_two_checkpoint_writes_of_an_epoch_leaves_no_stale_selected_file(plain, tmp_path):
    from denetdm.training.checkpoint import load_checkpoint

    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    # stage 1's epoch 2 is a new best: its `last` is written, its `selected` not yet (still epoch 1)
    proc = _run_with_fault("kill-after-write:stage1_last.pt:2", run_dir, cache)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert load_checkpoint(run_dir / "checkpoints" / "stage1_selected.pt")["epoch"] == 1
    rerun = run_cli(RUN, run_dir, env={"DENETDM_CACHE": str(cache)})
    assert rerun.returncode == 0 and "rewritten with the selected epoch 2" in rerun.stdout, rerun.stderr[-2000:]
    assert _numbers(run_dir) == plain
    results = json.loads((run_dir / "results.json").read_text())
    for stage in ("stage1", "stage2"):
        selected = load_checkpoint(run_dir / "checkpoints" / f"{stage}_selected.pt")
        assert selected["epoch"] == results[f"{stage}/selected_epoch"]


@pytest.mark.slow
def test_a_resumed_run_logs_no_epoch_twice_to_wandb_and_keeps_its_best_values(tmp_path):
    from wandb_files import read_run

    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    args = [*[a for a in RUN if not a.startswith("logger")], "logger=wandb", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "DENETDM_CACHE": str(cache), "WANDB_MODE": "offline"}
    # epoch 2 of stage 1 is logged to W&B, then the process dies writing its checkpoint: the rerun redoes it
    cmd = [sys.executable, str(ROOT / "tests" / "faultinject.py"), "kill-mid-write:stage1_last.pt:2"]
    proc = subprocess.run([*cmd, str(ROOT / "run.py"), *args], cwd=ROOT, env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    rerun = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env, capture_output=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    # W&B's own writer dies with the first process, so what it got is known from the state kept beside it
    second = read_run(sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))[-1])
    assert [json.loads(h["stage1/epoch"]) for h in second["history"] if "stage1/epoch" in h] == [3]  # not 2 again
    key = "stage1/shallow/val/acc_conflicting"
    curve = [r[key] for r in map(parse_line, (run_dir / "metrics.jsonl").read_text().splitlines()) if key in r]
    assert len(curve) == 3 and json.loads(second["summary"][f"best/{key}"]) == max(curve)  # over both processes


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_generation(plain, tmp_path):
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    proc = _run_with_fault("kill-after-epoch:stage1:2", run_dir, cache)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    _cut(run_dir / "checkpoints" / "stage1_last.pt", 0.5)  # epoch 2's; epoch 1's is stage1_previous.pt
    rerun = run_cli(RUN, run_dir, env={"DENETDM_CACHE": str(cache)})
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "stage1_last.pt is damaged or missing; continuing from" in rerun.stdout and "(epoch 1)" in rerun.stdout
    assert _numbers(run_dir) == plain


@contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[None]:
    """A real small filesystem (tmpfs) mounted at `path`; the test skips where this machine cannot mount one."""
    path.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    if os.geteuid() != 0 or not shutil.which("mount") or subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root; the file-size-limit test covers full writes here")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)])


def _write_failure(proc: subprocess.CompletedProcess, run_dir: Path, reason: str) -> None:
    """One error line naming the reason, every file left whole and loadable, nothing temporary left behind."""
    from denetdm.training.checkpoint import load_checkpoint

    assert proc.returncode == 1, proc.stderr[-3000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: could not write") and reason in line and "run the same command again" in line
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
    for ckpt in (run_dir / "checkpoints").glob("*.pt"):
        load_checkpoint(ckpt)
    for word in line.split(";", 1)[1].split():  # a file named as what a rerun continues from exists
        if word.startswith(str(run_dir)):
            assert Path(word.rstrip(";:,.")).exists(), line


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_rerun_after_freeing_space_continues(plain, tmp_path):
    run_dir, cache = tmp_path / "fs" / "run", tmp_path / "cachefs"
    with _tmpfs(tmp_path / "fs", "10m"), _tmpfs(cache, "1m"):  # checkpoints of 2 and 6 MB; a 3.7 MB cache file
        proc = run_cli(RUN, run_dir, env={"DENETDM_CACHE": str(cache)})
        _write_failure(proc, run_dir, "No space left on device")
        assert "could not write the dataset cache" in proc.stdout  # a warning: the data is in memory
        assert (run_dir / "metrics.jsonl").read_text().endswith("\n")  # whole records only
        subprocess.run(["mount", "-o", "remount,size=64m", str(tmp_path / "fs")], check=True)  # space freed
        rerun = run_cli(RUN, run_dir, env={"DENETDM_CACHE": str(cache)})
        assert rerun.returncode == 0 and "resuming after epoch" in rerun.stdout, rerun.stderr[-2000:]
        assert _numbers(run_dir) == plain


def _file_size_limit(limit: int):
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.slow
def test_a_file_size_limit_through_torchs_writer_is_one_line_and_the_rerun_continues(plain, tmp_path):
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    cmd = [sys.executable, str(ROOT / "run.py"), *RUN, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "DENETDM_CACHE": str(cache)}
    # 4 MB: the 2 MB selected checkpoint fits, the 6 MB resumable one and the 3.7 MB cache file do not (EFBIG)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, preexec_fn=_file_size_limit(4 << 20))
    _write_failure(proc, run_dir, "File too large")
    assert "there is no earlier one" in proc.stderr  # epoch 1's: never a file that does not exist
    rerun = run_cli(RUN, run_dir, env={"DENETDM_CACHE": str(cache)})
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert _numbers(run_dir) == plain


# --- damaged files: found, said in one line or regenerated, nothing else lost ---------------------------------------


def _flip(path: Path, at: float, bit: int = 4) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 1 << bit
    path.write_bytes(bytes(data))


def _cut(path: Path, at: float) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * at)])


def test_every_single_bit_flip_of_a_checkpoint_is_found_or_harmless(tmp_path):
    import torch

    from denetdm.errors import CheckpointError
    from denetdm.training.checkpoint import load_checkpoint, save_checkpoint

    net = torch.nn.Linear(20, 3)
    ckpt = {"kind": "stage1", "epoch": 2, "method": net.state_dict(), "optimizer": {"lr": 0.1, "state": {}}}
    path = tmp_path / "c.pt"
    save_checkpoint(ckpt, path)
    good = path.read_bytes()
    silent = []
    for pos in range(0, len(good), 3):  # a flip every third byte, across headers, pickle and tensor data
        path.write_bytes(good[:pos] + bytes([good[pos] ^ 0x08]) + good[pos + 1 :])
        try:
            loaded = load_checkpoint(path)
        except CheckpointError as e:
            assert "damaged" in str(e)
            continue
        same = loaded.keys() == ckpt.keys() and all(
            torch.equal(loaded["method"][k], v) for k, v in net.state_dict().items()
        )
        if not (
            same
            and {k: loaded[k] for k in ("kind", "epoch", "optimizer")}
            == {k: ckpt[k] for k in ("kind", "epoch", "optimizer")}
        ):
            silent.append(pos)
    assert silent == []  # torch itself would have loaded most of these changed values without a word
    for at in (0.1, 0.5, 0.99):  # truncated
        path.write_bytes(good[: int(len(good) * at)])
        with pytest.raises(CheckpointError, match="damaged"):
            load_checkpoint(path)


def test_a_jsonl_line_that_does_not_parse_is_named_and_the_rest_read(tmp_path, caplog):
    from denetdm.files.jsonlines import JsonLines

    records = [{"stage": "stage1", "epoch": e, "stage1/val/acc": 0.1234 * e, "note": "x"} for e in (1, 2, 3)]
    path = tmp_path / "metrics.jsonl"
    JsonLines(path).write_all(records)
    good = path.read_bytes()
    second = good.index(b"\n") + 1  # the second line
    path.write_bytes(good[:second] + good[second + 10 :])  # a line cut short in the middle of the file
    assert JsonLines(path).read() == [records[0], records[2]]
    assert "line 2 damaged" in caplog.text
    path.write_bytes(good[:-7])  # the last line torn by a crash: left out without a warning (the rerun rewrites it)
    caplog.clear()
    assert JsonLines(path).read() == records[:2] and "damaged" not in caplog.text


def _tiny(run_dir: Path, *extra: str) -> dict:
    from denetdm.training.pipeline import train

    from conftest import compose_cfg

    return train(compose_cfg([*TINY, *extra]), run_dir)


def _plain_numbers(run_dir: Path) -> list[dict]:
    return [
        {k: v for k, v in parse_line(x).items() if "/time/" not in k}
        for x in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["flip", "cut"])
def test_a_damaged_cache_file_is_regenerated_with_one_warning(damage, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DENETDM_CACHE", str(tmp_path / "cache"))
    _tiny(tmp_path / "a")
    (cache_file,) = (tmp_path / "cache").glob("synthetic-*.pt")
    _flip(cache_file, 0.6) if damage == "flip" else _cut(cache_file, 0.6)
    caplog.clear()
    _tiny(tmp_path / "b")
    warned = [r for r in caplog.records if str(cache_file) in r.getMessage()]
    assert len(warned) == 1 and "regenerating" in warned[0].getMessage()
    assert _plain_numbers(tmp_path / "b") == _plain_numbers(tmp_path / "a")
    caplog.clear()
    _tiny(tmp_path / "c")  # the regenerated file is good again
    assert str(cache_file) not in caplog.text


class _Killed(BaseException):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["flip", "cut"])
def test_a_damaged_checkpoint_stops_the_resume_with_one_line_and_loses_nothing_else(damage, tmp_path, monkeypatch):
    from denetdm.errors import CheckpointError
    from denetdm.training.recorder import Recorder

    _tiny(tmp_path / "plain", "experts.epochs=3")
    run = tmp_path / "run"
    report = Recorder.record

    def die_after_epoch_2(self, fit, epoch, *args):
        report(self, fit, epoch, *args)
        if (fit.stage, epoch) == ("stage1", 2):
            raise _Killed

    monkeypatch.setattr(Recorder, "record", die_after_epoch_2)
    with pytest.raises(_Killed):
        _tiny(run, "experts.epochs=3")
    monkeypatch.undo()
    generations = [run / "checkpoints" / f"stage1_{which}.pt" for which in ("last", "previous")]
    for path in generations:  # both: one damaged newest falls back to the other (the CLI test above)
        _flip(path, 0.7) if damage == "flip" else _cut(path, 0.7)
    before = {p.name: p.read_bytes() for p in [run / "metrics.jsonl", *(run / "checkpoints").iterdir()]}
    with pytest.raises(CheckpointError, match="stage1 checkpoints .* are both damaged or missing; delete them"):
        _tiny(run, "experts.epochs=3")
    assert {p.name: p.read_bytes() for p in [run / "metrics.jsonl", *(run / "checkpoints").iterdir()]} == before
    for path in generations:  # as the error says
        path.unlink()
    _tiny(run, "experts.epochs=3")
    assert _plain_numbers(run) == _plain_numbers(tmp_path / "plain")


@pytest.mark.slow
def test_a_damaged_metrics_line_is_named_and_kept_and_the_rest_read(tmp_path, caplog):
    from denetdm.reporting.runs import collect

    _tiny(tmp_path / "r")
    path = tmp_path / "r" / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1][:20] + lines[1][40:]  # no longer JSON
    path.write_text("".join(lines))
    caplog.clear()
    (run,) = collect([tmp_path]).runs
    assert [(r["stage"], r["epoch"]) for r in run.epochs()] == [("stage1", 1), ("stage2", 1), ("stage2", 2)]
    assert f"{path}: line 2 damaged" in caplog.text


@pytest.mark.slow
def test_a_damaged_trials_line_is_skipped_with_a_warning_and_the_sweep_command_rewrites_it(tmp_path, caplog):
    from denetdm.reporting.runs import trial_records

    sweep = tmp_path / "s"
    args = [
        "-m",
        "hparams_search=depth_gap",
        "hydra.sweeper.n_trials=3",
        *TINY,
        "experts.epochs=1",
        "target.epochs=1",
        f"hydra.sweep.dir={sweep}",
    ]
    assert run_cli(args).returncode == 0
    good = (sweep / "trials.jsonl").read_text()
    lines = good.splitlines(keepends=True)
    (sweep / "trials.jsonl").write_text(lines[0] + lines[1][:20] + "\n" + "".join(lines[2:]))  # line 2 cut short
    caplog.clear()
    assert [r["number"] for r in trial_records(sweep)] == [0, 2]
    assert "trials.jsonl: line" in caplog.text
    proc = run_cli(args)  # the same command: nothing trains, trials.jsonl is rewritten from study.db
    assert proc.returncode == 0 and (sweep / "trials.jsonl").read_text() == good


# --- the data's identity ---------------------------------------------------------------------------------------------


def test_a_changed_data_source_refuses_to_resume_and_never_shares_a_table_cell(tmp_path):
    from denetdm.errors import CheckpointError
    from denetdm.reporting.runs import collect
    from denetdm.reporting.tables import build_table, to_markdown
    from denetdm.training.pipeline import train

    from conftest import COMMON, compose_cfg, fake_mnist

    root = fake_mnist(tmp_path / "data")
    args = [*COMMON, "dataset=cmnist", f"data_root={root}", f"cache_dir={tmp_path / 'cache'}", "dataset.val_size=50"]
    args += ["dataset.download=false", "experts.epochs=1", "target.epochs=1", "threads=1"]
    first = train(compose_cfg(args), tmp_path / "a")
    images = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    changed = bytearray(images.read_bytes())
    changed[-1] ^= 0xFF  # one pixel of the last training image
    images.write_bytes(bytes(changed))
    with pytest.raises(CheckpointError, match=r"differs in: data_digest\)"):
        train(compose_cfg(args), tmp_path / "a")  # neither the old results shown nor its checkpoints resumed
    second = train(compose_cfg(args), tmp_path / "b")
    assert second["config"]["data_digest"] != first["config"]["data_digest"]
    table = build_table(collect([tmp_path / "a", tmp_path / "b"]))
    assert len(table.cols) == 2 and all(len(cell.values) == 1 for cell in table.cells.values())
    md = to_markdown(table)
    for r in (first, second):
        assert f"[data {r['config']['data_digest'][:8]}]" in md
