"""End to end through `python run.py`: results, determinism, resume, stages, bad input, W&B offline."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from denetdm import provenance
from denetdm.files.jsonlines import parse_line

from conftest import ROOT, TINY, compose_cfg, read_results, run_cli
from wandb_files import read_run

pytestmark = pytest.mark.slow

RESULT_KEYS = [
    *(
        f"{s}/{m}"
        for s in ("test", "val")
        for m in ("acc_unbiased", "acc_aligned", "acc_conflicting", "acc_worst_group", "acc")
    ),
    "stage1/shallow/test/acc_conflicting",
    "stage1/deep/test/acc_conflicting",
    "stage1/shallow/test/acc_unbiased",
    "seed",
    "selection",
    "time/stage1_s",
    "time/stage2_s",
    "time/total_s",
    "config",
]


def numbers(run_dir: Path) -> list[dict]:
    """metrics.jsonl without wall-clock entries."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in parse_line(x).items() if "/time/" not in k} for x in lines]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    proc = run_cli(TINY, run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_end_to_end_writes_results_metrics_checkpoints(tiny_run):
    results = read_results(tiny_run)
    missing = [k for k in RESULT_KEYS if k not in results]
    assert not missing, missing
    assert all(0 <= results[k] <= 1 for k in RESULT_KEYS if "/acc" in k)
    assert results["selection"] == "val" and results["seed"] == 0 and results["selection_oracle"] is False
    assert results["config"]["dataset"]["name"] == "synthetic"
    records = numbers(tiny_run)
    assert [(r["stage"], r["epoch"]) for r in records] == [("stage1", 1), ("stage1", 2), ("stage2", 1), ("stage2", 2)]
    # one key layout everywhere: <stage>/<head>/<split>/<metric>
    assert "stage1/shallow/val/acc_unbiased" in records[0] and "stage2/target/test/acc_worst_group" in records[2]
    assert "stage1/train/loss" in records[0] and "stage2/train/loss_dist" in records[2]
    for name in ("stage1_selected", "stage1_last", "stage2_selected", "stage2_last"):
        assert (tiny_run / "checkpoints" / f"{name}.pt").is_file()
    assert (tiny_run / "done").exists()
    # the selected stage-2 model is the best validation epoch, and its test numbers are reported
    best = max((r for r in records if r["stage"] == "stage2"), key=lambda r: r["stage2/target/val/acc_unbiased"])
    assert results["test/acc_unbiased"] == best["stage2/target/test/acc_unbiased"]
    assert results["stage2/target/test/acc_unbiased"] == results["test/acc_unbiased"]


def test_same_config_same_numbers(tiny_run, tmp_path):
    proc = run_cli(TINY, tmp_path / "again")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert numbers(tmp_path / "again") == numbers(tiny_run)
    assert "stage2 target" in proc.stdout  # the summary table


def test_finished_run_is_not_retrained(tiny_run):
    before = (tiny_run / "metrics.jsonl").read_text()
    proc = run_cli(TINY, tiny_run)
    assert proc.returncode == 0 and "already finished" in proc.stdout
    assert (tiny_run / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize(
    "method,kill_at",
    [
        *(("denetdm", "stage1_last.pt"), ("denetdm", "stage2_last.pt"), ("jtt", "jtt_last.pt")),
        *(("lff", "lff_last.pt"), ("dfa", "dfa_last.pt"), ("lc", "lc_last.pt")),
    ],
)  # during DeNetDM's stage 1 and stage 2, during JTT's second phase, during LfF, DFA and LC (per-sample state)
def test_resume_after_kill_gives_the_uninterrupted_results(tmp_path, method, kill_at):
    args = [*TINY, "dataset.train_size=4000", "experts.epochs=3", "target.epochs=3", f"method={method}"]
    args += ["method.swap_after=1"] if method == "dfa" else []  # its swap begins after the first epoch
    args += ["method.rampup_epochs=2"] if method == "lc" else []  # its mix-up ramps up across the kill
    ref = tmp_path / "ref"
    assert run_cli(args, ref).returncode == 0
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "run.py"), *args, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "checkpoints" / kill_at).exists():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be interrupted"
    assert not (run_dir / "results.json").exists()
    resumed = run_cli(args, run_dir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming after epoch" in resumed.stdout
    assert numbers(run_dir) == numbers(ref)
    got, want = read_results(run_dir), read_results(ref)
    assert {k: v for k, v in got.items() if "time" not in k} == {k: v for k, v in want.items() if "time" not in k}


def test_stage1_then_stage2_then_eval(tiny_run, tmp_path):
    s1 = tmp_path / "s1"
    assert run_cli([*TINY, "stage=stage1"], s1).returncode == 0
    r1 = read_results(s1)
    assert "stage1/shallow/val/acc_unbiased" in r1 and "test/acc_unbiased" not in r1
    s2 = tmp_path / "s2"
    proc = run_cli([*TINY, "stage=stage2", f"stage.previous_ckpt={s1}/checkpoints/stage1_selected.pt"], s2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    full = read_results(tiny_run)
    assert read_results(s2)["test/acc_unbiased"] == full["test/acc_unbiased"]  # same as stage 1 + 2 in one run
    ev = tmp_path / "ev"
    proc = run_cli([*TINY, "stage=eval", f"stage.ckpt={tiny_run}/checkpoints/stage2_selected.pt"], ev)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_results(ev)["test/acc_unbiased"] == pytest.approx(full["test/acc_unbiased"])


def test_selection_test_is_labelled_oracle(tmp_path):
    proc = run_cli([*TINY, "selection=test", "experts.epochs=1", "target.epochs=1"], tmp_path / "o")
    assert proc.returncode == 0
    assert read_results(tmp_path / "o")["selection_oracle"] is True
    assert "TEST set" in proc.stdout and "oracle" in proc.stdout


def _one_clear_line(proc, *words):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for w in words:
        assert w in errors[0], errors[0]


# the real command line: an error is one `error:` line and no traceback (the other keys: tests/test_errors.py)
@pytest.mark.parametrize(
    "overrides,words",
    [
        (["dataset=foo"], ["dataset", "cmnist", "synthetic"]),
        (["severity=9"], ["severity", "1, 2, 3, 4"]),
        (["dataset.conflict_pct=150"], ["conflict_pct", "150"]),
        (["stage=stage2"], ["stage.previous_ckpt"]),
    ],
)
def test_bad_input_gives_one_clear_error(tmp_path, overrides, words):
    _one_clear_line(run_cli([*TINY, *overrides], tmp_path / "bad"), *words)


def test_a_failed_run_records_its_error_and_tables_list_it(tmp_path, capsys):
    from sweep import main as sweep_main

    run_dir = tmp_path / "runs" / "bad"
    proc = run_cli([*TINY, "model.deep.depth=0"], run_dir)
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and json.loads((run_dir / "failed.json").read_text())["error"] == error[7:]
    (tmp_path / "runs" / "damaged").mkdir()
    (tmp_path / "runs" / "damaged" / "results.json").write_text('{"cut off')
    with pytest.raises(SystemExit) as stop:
        sweep_main(["table", str(tmp_path / "runs")])
    assert f"runs/bad: failed: {error[7:]}" in str(stop.value) and "runs/damaged: damaged: results.json" in str(
        stop.value
    )
    assert run_cli([*TINY, "experts.epochs=1", "target.epochs=1"], run_dir).returncode == 0
    assert not (run_dir / "failed.json").exists()  # finished: no longer failed


def test_wandb_offline_run_logs_metrics_config_and_summary(tmp_path):
    args = [*[a for a in TINY if not a.startswith("logger")], "logger=wandb"]
    proc = run_cli(args, tmp_path / "w", env={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"files in {tmp_path / 'w'}; compare with other runs: python sweep.py table {tmp_path / 'w'}" in proc.stdout
    files = list((tmp_path / "w" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    logged = read_run(files[0])
    run = logged["run"]
    assert run["group"].startswith("denetdm synthetic sev4 1% d3-5 val #") and run["job_type"] == "denetdm-full"
    assert run["name"] == "denetdm-synthetic-1pct-d3-5-seed0"
    assert set(run["tags"]) == {"synthetic", "sev4", "conflict1pct", "depths3-5", "denetdm", "selection-val"} | {
        "bias-labels-False"
    }
    assert {"seed", "dataset", "experts", "target", "model"} <= run["config_keys"]
    where = run["config"]["run"]
    assert where["dir"] == str((tmp_path / "w").resolve()) and "logger=wandb" in where["command"]
    assert where["commit"] == provenance.commit()
    keys = set().union(*logged["history"])
    assert {
        "stage1/epoch",
        "stage1/shallow/val/acc_unbiased",
        "stage1/train/loss",
        "stage2/target/test/acc_unbiased",
    } <= keys
    epochs = [json.loads(h["stage1/epoch"]) for h in logged["history"] if "stage1/epoch" in h]
    assert epochs == [1, 2]
    results = read_results(tmp_path / "w")
    assert math.isclose(json.loads(logged["summary"]["test/acc_unbiased"]), results["test/acc_unbiased"])


def test_an_offline_wandb_run_reads_back_with_the_reader_the_docs_name(tmp_path):
    # docs/sweeps.md: `wandb leet inspect --summary --json <offline run>` (W&B 0.31's own reader)
    args = [*[a for a in TINY if not a.startswith("logger")], "logger=wandb"]
    proc = run_cli(args, tmp_path / "w", env={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sum("wandb:" in line for line in (proc.stdout + proc.stderr).splitlines()) <= 3  # quiet unless asked
    (run,) = (tmp_path / "w" / "wandb").glob("offline-run-*")
    wandb = Path(sys.executable).with_name("wandb")
    out = subprocess.run([wandb, "leet", "inspect", "--summary", "--json", str(run)], capture_output=True, text=True)
    summary = json.loads(out.stdout)["summary"]
    assert summary["test/acc_unbiased"] == pytest.approx(read_results(tmp_path / "w")["test/acc_unbiased"])


def test_provenance_names_this_checkouts_commit_or_the_packed_one(tmp_path, monkeypatch):
    # records name the code that made them; the GPU machine's copy of the tree has an older .git (make gpu-pack)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("the tests do not run from a git checkout")
    monkeypatch.delenv("DENETDM_COMMIT", raising=False)
    assert provenance.commit().split("+")[0] == head.stdout.strip()
    monkeypatch.setenv("DENETDM_COMMIT", "4d193b5")
    assert provenance.commit() == "4d193b5"
    monkeypatch.delenv("DENETDM_COMMIT")
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    assert provenance.commit() == "unknown"


def test_provenance_names_the_cpu_kernels_torch_ran_with():
    # they round differently (AVX2 against AVX-512): a record says which made it, ATEN_CPU_CAPABILITY picks them
    code = "import torch; from denetdm import provenance; print(provenance.machine(torch.device('cpu')))"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert "'cpu_kernels': 'DEFAULT'" in proc.stdout, proc.stderr[-2000:]


def test_a_runs_warnings_are_text_in_its_wandb_summary(tmp_path, monkeypatch):
    from denetdm.reporting.loggers import WandbLogger
    from denetdm.training.plan import plan

    monkeypatch.setenv("WANDB_MODE", "offline")
    with WandbLogger(str(tmp_path), plan(compose_cfg(TINY), tmp_path).config) as logger:
        logger.summary({"test/acc": 0.5, "warnings": ["stage1: the deep expert collapsed", "another"]})
    (file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    summary = read_run(file)["summary"]
    assert json.loads(summary["test/acc"]) == 0.5
    assert json.loads(summary["warnings"]) == "stage1: the deep expert collapsed\nanother"


def test_a_resumed_run_continues_the_same_wandb_run_with_later_steps(tmp_path):
    args = [*[a for a in TINY if not a.startswith("logger")], "logger=wandb"]
    for stage in ("stage=stage1", "stage=full"):  # the second run resumes the first's directory
        proc = run_cli([*args, stage], tmp_path / "w", env={"WANDB_MODE": "offline"})
        assert proc.returncode == 0, proc.stderr[-2000:]
    files = sorted((tmp_path / "w" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2  # one offline record per process, `wandb sync` merges them into one run
    first, second = (read_run(f) for f in files)
    assert (
        first["run"]["id"] == second["run"]["id"] == json.loads((tmp_path / "w" / "wandb_run.json").read_text())["id"]
    )
    steps = [h["_step"] for h in first["history"] + second["history"]]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)  # never backwards
    assert {"stage1/epoch"} <= set().union(*first["history"]) and "stage2/epoch" in set().union(*second["history"])
    assert first["artifacts"] == second["artifacts"] == []  # checkpoints are logged only when asked for


def test_selected_checkpoints_as_a_wandb_artifact(tmp_path):
    args = [*[a for a in TINY if not a.startswith("logger")], "logger=wandb", "logger.log_checkpoints=true"]
    proc = run_cli(args, tmp_path / "w", env={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    (file,) = (tmp_path / "w" / "wandb").glob("offline-run-*/run-*.wandb")
    logged = read_run(file)
    assert logged["artifacts"] == [
        {
            "name": f"checkpoints-{logged['run']['id']}",
            "type": "model",
            "files": ["stage1_selected.pt", "stage2_selected.pt"],
        }
    ]


def test_default_command_trains_and_shows_the_effect(tmp_path):
    # `make run` is `python run.py` with the defaults: synthetic shapes, stage 1 then stage 2
    proc = run_cli(["logger=none", "progress=false"], tmp_path / "default")
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = read_results(tmp_path / "default")
    assert r["config"]["dataset"]["name"] == "synthetic" and r["config"]["stage"]["name"] == "full"
    # the shallow expert learns the shapes, the deep one the colours
    assert r["stage1/shallow/test/acc_conflicting"] > r["stage1/deep/test/acc_conflicting"] + 0.2
    assert r["test/acc_unbiased"] > 0.5 and r["stage1/shallow/test/acc_unbiased"] > 0.5


def test_main_returns_the_validation_objective(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import run

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=TINY, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    value = run.main.__wrapped__(cfg)
    assert value == read_results(tmp_path)["val/acc_unbiased"]
