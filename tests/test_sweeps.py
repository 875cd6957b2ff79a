"""Sweeps through `python run.py -m hparams_search=...` (Optuna and the basic sweeper)."""

import json
import subprocess
import sys

import pytest
import yaml

from denetdm.cli import LAUNCHER_PLUGINS, check_launcher, missing_plugin
from denetdm.files.jsonlines import parse_line

from conftest import ROOT, TINY, run_cli
from wandb_files import read_run

pytestmark = pytest.mark.slow


def _jobs(sweep_dir):
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir() and (p / "results.json").exists())


def test_depth_gap_samples_only_legal_pairs_and_records_the_best(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "-m",
            "hparams_search=depth_gap",
            "hydra.sweeper.n_trials=3",
            *TINY,
            "experts.epochs=1",
            "target.epochs=1",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = _jobs(sweep)
    assert len(jobs) == 3
    values = []
    for job in jobs:
        r = json.loads((job / "results.json").read_text())
        model = r["config"]["model"]
        assert model["deep"]["depth"] > model["shallow"]["depth"]
        assert model["target"]["depth"] == model["deep"]["depth"]
        values.append(r["val/acc_unbiased"])  # the objective: a validation number, never a test one
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(values))
    assert best["best_params"]["model.deep.depth"] > best["best_params"]["model.shallow.depth"]


def test_seeds_sweep_runs_each_combination(tmp_path):
    sweep = tmp_path / "sweep"
    # command-line sweeps take precedence over the ones in hparams_search/seeds.yaml
    proc = run_cli(
        [
            "-m",
            "hparams_search=seeds",
            *TINY,
            "seed=0,1",
            "dataset.conflict_pct=1,5",
            "experts.epochs=1",
            "target.epochs=1",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    combos = {
        (r["seed"], r["config"]["dataset"]["conflict_pct"])
        for r in (json.loads((j / "results.json").read_text()) for j in _jobs(sweep))
    }
    assert combos == {(0, 1), (0, 5), (1, 1), (1, 5)}
    studies = {json.loads((j / "results.json").read_text())["config"]["trial"]["study"] for j in _jobs(sweep)}
    assert studies == {"seeds-synthetic-sweep"}  # named after this sweep: a W&B filter shows it alone
    assert proc.stdout.strip().splitlines()[-1] == (
        f"sweep done: runs in {sweep}; table: python sweep.py table {sweep}; plots: python sweep.py plot {sweep}"
    )


def test_a_study_holds_one_setting_and_one_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "hparams_search=distill", *TINY, "target.epochs=1", f"hydra.sweep.dir={sweep}"]
    assert run_cli([*args, "hydra.sweeper.n_trials=1", "experts.epochs=1"]).returncode == 0
    assert [t["study"] for t in _trials(sweep)] == ["distill-synthetic-sweep"]
    # resumed with another fixed value: refused in one line, the study and its trials unchanged
    proc = run_cli([*args, "hydra.sweeper.n_trials=2", "experts.epochs=2"])
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: study distill-synthetic-sweep") and "experts.epochs=1, this command has 2" in last
    # another study in this directory would reuse its job directories
    proc = run_cli([*args, "hydra.sweeper.n_trials=2", "experts.epochs=2", "hydra.sweeper.study_name=other"])
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {sweep} holds the trials of study distill-")
    assert len(_trials(sweep)) == 1
    # the same settings resume it; a swept value given a new range is no other setting
    assert (
        run_cli(
            [*args, "hydra.sweeper.n_trials=2", "experts.epochs=1", "target.lr=tag(log,interval(0.0005,0.005))"]
        ).returncode
        == 0
    )
    assert [t["state"] for t in _trials(sweep)] == ["COMPLETE", "COMPLETE"]


def _trials(sweep_dir):
    return [parse_line(line) for line in (sweep_dir / "trials.jsonl").read_text().splitlines()]


# with seed 0, TPE samples shallow depth 0 (an illegal MLP depth) in some trials of this space (the second is one),
# and (1, 3) in the others
BAD_DEPTHS = [
    "hparams_search=depth_gap",
    "search.shallow.low=0",
    "search.shallow.high=1",
    "search.deep.low=3",
    "search.deep.high=3",
    "hydra.sweeper.n_trials=6",
]


def test_failed_trials_are_recorded_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *BAD_DEPTHS, *TINY, "experts.epochs=1", "target.epochs=1", f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    trials = _trials(sweep)
    assert [t["number"] for t in trials] == list(range(len(trials)))
    failed = [t for t in trials if t["state"] == "FAIL"]
    assert len(trials) == 6 + len(failed)  # n_trials counts COMPLETE trials: failed ones are replaced
    assert failed and all(t["params"]["model.shallow.depth"] == 0 for t in failed)
    assert all("mlp depth" in t["error"] for t in failed)
    for t in failed:  # each failed trial's error is in its own log
        assert "trial failed: mlp depth" in (sweep / str(t["job"]) / "run.log").read_text()
        assert "mlp depth" in json.loads((sweep / str(t["job"]) / "failed.json").read_text())["error"]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["n_failed"] == len(failed) and best["n_complete"] == 6
    # a repeat of a finished trial is answered from the study, not trained again
    for t in trials:
        if "repeat_of" in t:
            assert t["value"] == trials[t["repeat_of"]]["value"] and "job" not in t
    assert len(_jobs(sweep)) == len({json.dumps(t["params"]) for t in trials if t["state"] == "COMPLETE"})


def test_too_many_failures_stop_the_sweep_with_one_line_and_keep_the_finished_trials(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *BAD_DEPTHS, "hydra.sweeper.max_failure_rate=0", *TINY, "experts.epochs=1", "target.epochs=1"]
    proc = run_cli([*args, f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    trials = _trials(sweep)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: 1 of {len(trials)} trials failed, more than max_failure_rate")
    assert trials[-1]["state"] == "FAIL" and all(t["state"] == "COMPLETE" for t in trials[:-1])  # stopped at once
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["n_failed"] == 1 and best["best_value"] > 0


def test_a_failed_job_does_not_stop_a_grid_of_the_basic_sweeper(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        ["-m", *TINY, "model.shallow.depth=0,3", "experts.epochs=1", "target.epochs=1", f"hydra.sweep.dir={sweep}"]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (sweep / "1" / "results.json").exists() and not (sweep / "0" / "results.json").exists()
    assert "trial failed: mlp depth" in (sweep / "0" / "run.log").read_text()


def test_each_trial_is_a_wandb_run_grouped_by_its_setting_and_tagged_with_its_study(tmp_path):
    sweep = tmp_path / "sweep"
    args = [*[a for a in TINY if not a.startswith("logger")], "logger=wandb", "experts.epochs=3", "target.epochs=1"]
    proc = run_cli(
        ["-m", "hparams_search=depth_gap", "hydra.sweeper.n_trials=2", *args, f"hydra.sweep.dir={sweep}"],
        env={"WANDB_MODE": "offline"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for t in _trials(sweep):
        if "job" not in t:
            continue
        (path,) = (sweep / str(t["job"]) / "wandb").glob("offline-run-*/run-*.wandb")
        logged = read_run(path)
        pair = f"{t['params']['model.shallow.depth']}-{t['params']['model.deep.depth']}"
        # a trial's group is its setting (its depth pair), as a table cell; the study is a tag
        assert logged["run"]["group"].startswith(f"denetdm synthetic sev4 1% d{pair} val #")
        assert logged["run"]["job_type"] == "denetdm-full"
        trial = logged["run"]["config"]["trial"]
        assert trial["number"] == t["number"] and trial["params"] == t["params"]
        assert {"synthetic", "sev4", "conflict1pct", f"depths{pair}", "study-depth_gap-synthetic-sweep"} <= set(
            logged["run"]["tags"]
        )
        assert json.loads(logged["summary"]["val/acc_unbiased"]) == pytest.approx(t["value"])
        # the stage-1 verdict on the deep expert, as trials.jsonl has it
        assert json.loads(logged["summary"]["stage1/collapsed"]) == t["collapsed"]
        key = "stage1/shallow/val/acc_conflicting"
        curve = [json.loads(h[key]) for h in logged["history"] if key in h]
        assert json.loads(logged["summary"][f"best/{key}"]) == pytest.approx(max(curve))


def test_two_workers_share_one_study(tmp_path):
    # the recipe of docs/sweeps.md: create the study, then start workers on the same storage and study name, each with
    # its own sweep dir and sampler seed, one thread each
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="shared", storage=storage, direction="maximize")
    procs = []
    for worker in (0, 1):
        args = [
            "-m",
            "hparams_search=distill",
            "hydra.sweeper.n_trials=2",
            f"hydra.sweeper.storage={storage}",
            "hydra.sweeper.study_name=shared",
            f"hydra.sweeper.sampler.seed={worker}",
            "threads=1",
            *TINY,
            "experts.epochs=1",
            "target.epochs=1",
            f"hydra.sweep.dir={tmp_path / f'worker{worker}'}",
        ]
        cmd = [sys.executable, str(ROOT / "run.py"), *args]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="shared", storage=storage)
    numbers = sorted(t.number for t in study.trials)
    assert numbers == [0, 1, 2, 3]  # the sum of the workers' trials, each number once
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    ran = {}
    for worker in (0, 1):
        for job in _jobs(tmp_path / f"worker{worker}"):
            r = json.loads((job / "results.json").read_text())
            ran[r["config"]["trial"]["number"]] = r["val/acc_unbiased"]
    assert ran == {t.number: pytest.approx(t.value) for t in study.trials}
    # sweep.py reads the workers' folders as one study
    from denetdm.reporting.runs import trial_records

    assert [r["number"] for r in trial_records(tmp_path)] == [0, 1, 2, 3]
    best = subprocess.run(
        [sys.executable, "sweep.py", "best", "--storage", storage, "--study-name", "shared"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert best.returncode == 0 and f"{max(ran.values()):.4f}" in best.stdout


@pytest.mark.skipif(bool(missing_plugin("joblib")), reason="optional hydra-joblib-launcher not installed")
def test_joblib_launcher_runs_trials_in_parallel_batches(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "-m",
            "hparams_search=depth_gap",
            "launcher=joblib",
            "hydra.sweeper.n_trials=4",
            *TINY,
            "experts.epochs=1",
            "target.epochs=1",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("Joblib.Parallel(n_jobs=2") == 2  # two batches of two trials
    trials = _trials(sweep)
    assert [t["number"] for t in trials] == [0, 1, 2, 3] and all(t["state"] == "COMPLETE" for t in trials)
    for job in _jobs(sweep):
        assert json.loads((job / "results.json").read_text())["config"]["threads"] == 1


def test_a_launcher_without_its_plugin_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(LAUNCHER_PLUGINS, "joblib", ("hydra_plugins.not_installed_here", "some-plugin==1.0"))
    message = check_launcher(["-m", "launcher=joblib"])
    assert message == "error: launcher=joblib needs the optional plugin some-plugin==1.0: run `make install-launchers`"
    assert check_launcher(["launcher=null", "seed=1"]) is None


def test_a_fixed_value_of_a_searched_parameter_is_one_clear_line(tmp_path):
    proc = run_cli(["-m", "hparams_search=depth_gap", "model.shallow.depth=3", *TINY, f"hydra.sweep.dir={tmp_path}"])
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the search space cannot be sampled") and "model.shallow.depth" in last


def test_seeds_sweep_over_methods_gives_one_table_row_each(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "-m",
            "hparams_search=seeds",
            "method=erm,groupdro,denetdm",
            "seed=0",
            "dataset.conflict_pct=1",
            *TINY,
            "experts.epochs=1",
            "target.epochs=2",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {json.loads((j / "results.json").read_text())["method"] for j in _jobs(sweep)} == {
        "erm",
        "groupdro",
        "denetdm",
    }
    table = subprocess.run([sys.executable, "sweep.py", "table", str(sweep)], cwd=ROOT, capture_output=True, text=True)
    rows = [line.split("|")[1].strip() for line in table.stdout.splitlines() if line.startswith("| ")][1:]
    assert sorted(rows) == ["DeNetDM", "ERM", "Group DRO [bias labels]"]
    assert "[bias labels]: the method trains with bias labels" in table.stdout


def test_a_storage_password_is_redacted_where_denetdm_writes_logs_or_uploads_it(tmp_path, monkeypatch):
    import sys

    from denetdm.reporting.loggers import _secret_in_command_line
    from denetdm.sweeps.pruning import redact
    from denetdm.sweeps.sweeper import redact_hydra_files

    url = "postgresql://ana:s3cr%40t@db.example.org:5432/sweeps"
    assert redact(url) == "postgresql://ana:***@db.example.org:5432/sweeps"
    assert redact("sqlite:////tmp/sweep/study.db") == "sqlite:////tmp/sweep/study.db"  # nothing to hide
    # what Hydra saves of the command line: the sweep's multirun.yaml and each job's .hydra/hydra.yaml
    (tmp_path / "0" / ".hydra").mkdir(parents=True)
    for f in (tmp_path / "multirun.yaml", tmp_path / "0" / ".hydra" / "hydra.yaml"):
        f.write_text(f"hydra:\n  overrides:\n    hydra:\n    - hydra.sweeper.storage={url}\n")
    redact_hydra_files(tmp_path, url)
    for f in (tmp_path / "multirun.yaml", tmp_path / "0" / ".hydra" / "hydra.yaml"):
        assert "s3cr" not in f.read_text() and "ana:***@db.example.org" in f.read_text()
    monkeypatch.setattr(sys, "argv", ["run.py", "-m", f"hydra.sweeper.storage={url}"])
    assert _secret_in_command_line()  # W&B then leaves the command line out of the run's metadata
    monkeypatch.setattr(sys, "argv", ["run.py", "-m", "seed=0,1"])
    assert not _secret_in_command_line()


def _dashboard_get(app, path: str) -> dict:
    """GET `path` from optuna-dashboard's WSGI app, as its browser page does."""
    from wsgiref.util import setup_testing_defaults

    environ: dict = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status[0].startswith("200"), (status, body[:500])
    return json.loads(body)


@pytest.mark.parametrize("storage", ["default", "journal"])
def test_optuna_dashboard_opens_a_sweeps_study(storage, tmp_path):
    # the commands of docs/sweeps.md: optuna-dashboard sqlite:///<sweep dir>/study.db, or <sweep dir>/study.journal
    from optuna_dashboard import wsgi

    sweep = tmp_path / "sweep"
    args = ["-m", "hparams_search=distill", "hydra.sweeper.n_trials=2", *TINY, "experts.epochs=1", "target.epochs=1"]
    if storage == "journal":
        args.append("hydra.sweeper.storage=journal")
    proc = run_cli([*args, f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in sweep.glob("study.*")) == [("study.journal" if storage == "journal" else "study.db")]
    url = str(sweep / "study.journal") if storage == "journal" else f"sqlite:///{sweep / 'study.db'}"
    app = wsgi(url)
    (summary,) = _dashboard_get(app, "/api/studies")["study_summaries"]
    assert summary["study_name"] == "distill-synthetic-sweep"
    detail = _dashboard_get(app, f"/api/studies/{summary['study_id']}")
    assert [t["state"] for t in detail["trials"]] == ["Complete", "Complete"]
    rows = [json.loads(line) for line in (sweep / "trials.jsonl").read_text().splitlines()]
    assert [t["values"][0] for t in detail["trials"]] == pytest.approx([r["value"] for r in rows])


# a 12-layer deep MLP of torch's default init collapses on the synthetic set within 3 epochs; a 3-layer one does not
# (a grid: each once; Optuna's grid sampler used to raise outside study.optimize once its grid was drawn)
COLLAPSING = [
    *("hydra/sweeper=denetdm_optuna", "hydra/sweeper/sampler=grid"),
    *("hydra.sweeper.direction=maximize", "hydra.sweeper.n_trials=3", "hydra.sweeper.max_failure_rate=0"),
    "model.deep.depth=3,12",
    *("model.shallow.depth=2", "method=denetdm_stage1", *TINY, "experts.epochs=3"),
]


@pytest.mark.parametrize("fail_collapsed", [False, True])
def test_a_sweep_records_collapsed_trials_and_can_fail_them(tmp_path, fail_collapsed):
    import optuna

    sweep = tmp_path / "sweep"
    setting = f"hydra.sweeper.fail_collapsed={str(fail_collapsed).lower()}"
    proc = run_cli(["-m", *COLLAPSING, setting, f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(_trials(sweep)) == 2  # n_trials=3, capped at the grid's size
    trained = {t["params"]["model.deep.depth"]: t for t in _trials(sweep)}
    assert trained[12]["collapsed"] is True and trained[3]["collapsed"] is False
    assert trained[12]["collapse_signal"] < 0.9 <= trained[3]["collapse_signal"]
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{sweep / 'study.db'}")
    attrs = {t.params["model.deep.depth"]: t.user_attrs for t in study.trials if "job" in t.user_attrs}
    assert attrs[12]["collapsed"] is True and attrs[3]["collapsed"] is False
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    if fail_collapsed:  # failed, counted by n_trials, not as a failure (max_failure_rate=0 goes on)
        assert trained[12]["state"] == "FAIL" and trained[12]["error"].startswith("stage 1's deep expert collapsed")
        assert best["best_params"]["model.deep.depth"] == 3
    else:  # the collapsed trial completes, and here its objective is even the higher one
        assert trained[12]["state"] == "COMPLETE" and trained[12]["value"] > trained[3]["value"]
        assert best["best_params"]["model.deep.depth"] == 12


def test_a_storage_that_cannot_be_opened_is_one_line(tmp_path):
    args = ["-m", "hparams_search=distill", *TINY, "hydra.sweeper.storage=journal:/nonexistent/dir/study.journal"]
    proc = run_cli([*args, f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: hydra.sweeper.storage=journal:/nonexistent")
