"""sweep.py on a small committed sweep (tests/fixtures/sweeps: an Optuna depth_gap sweep, a seeds sweep, and a
sweep with a failed job), checked against golden files and against numbers recomputed from results.json."""

import csv
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from denetdm.files.jsonlines import parse_line
from denetdm.reporting.runs import Collection, Run
from denetdm.reporting.tables import build_table, to_markdown
from sweep import main as sweep_main

from conftest import ROOT
from wandb_files import read_run

FIXTURES = ROOT / "tests" / "fixtures"
SWEEPS = FIXTURES / "sweeps"
SEEDS = SWEEPS / "seeds"


def _sweep(args: list[str], capsys) -> str:
    sweep_main(args)
    return capsys.readouterr().out


def test_table_markdown_matches_the_golden_file(capsys):
    assert _sweep(["table", str(SWEEPS)], capsys) == (FIXTURES / "sweeps_table.md").read_text()


def test_table_latex_matches_the_golden_file(capsys):
    assert _sweep(["table", str(SWEEPS), "--format", "latex"], capsys) == (FIXTURES / "sweeps_table.tex").read_text()


def test_table_cells_are_mean_and_std_over_seeds_of_the_results(capsys):
    rows = list(csv.DictReader(io.StringIO(_sweep(["table", str(SWEEPS), "--format", "csv"], capsys))))
    cell = next(r for r in rows if (r["depths"], r["conflict_pct"]) == ("3 5", "5.0"))
    assert cell["selection"] == "val" and cell["method"] == "DeNetDM"
    # recomputed independently: the seeds sweep's two runs at 5 % conflicting samples
    values = []
    for job in sorted((SWEEPS / "seeds").iterdir()):
        r = json.loads((job / "results.json").read_text())
        if r["config"]["dataset"]["conflict_pct"] == 5:
            values.append(100 * r["test/acc_unbiased"])
    assert len(values) == 2 and int(cell["n"]) == 2
    assert float(cell["mean"]) == pytest.approx(statistics.fmean(values), abs=1e-4)
    assert float(cell["std"]) == pytest.approx(statistics.stdev(values), abs=1e-4)


def test_a_metric_that_is_not_a_fraction_is_shown_as_recorded(capsys):
    out = _sweep(["table", str(SWEEPS), "--format", "csv", "--metric", "time/total_s"], capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    cell = next(r for r in rows if (r["depths"], r["conflict_pct"]) == ("3 5", "5.0"))
    seconds = [json.loads((job / "results.json").read_text()) for job in sorted((SWEEPS / "seeds").iterdir())]
    seconds = [r["time/total_s"] for r in seconds if r["config"]["dataset"]["conflict_pct"] == 5]
    assert float(cell["mean"]) == pytest.approx(statistics.fmean(seconds), abs=1e-3)
    assert "(%)" not in _sweep(["table", str(SWEEPS), "--metric", "time/total_s"], capsys)


def test_table_lists_incomplete_runs_and_counts_a_repeated_run_once(capsys):
    out = _sweep(["table", str(SWEEPS)], capsys)
    assert "sweeps/failed/0: failed: mlp depth" in out
    assert "left out: 2 run(s) repeating another run's config and seed" in out


def _fake_run(path: str, seed: int, lr: float, val: float, test: float) -> Run:
    config = {
        "model": {"shallow": {"depth": 3}, "deep": {"depth": 5}},
        "severity": {"level": "4"},
        "seed": seed,
        "dataset": {"name": "toy", "severity": 4, "conflict_pct": 1, "seed": seed},
        "stage2": {"lr": lr},
        "trial": {"number": seed, "params": {"stage2.lr": lr}},  # an Optuna sweep's trial: lr is searched
    }
    results = {"config": config, "selection": "val", "stages": ["stage1", "stage2"], "depths": [3, 5]}
    results |= {"method": "denetdm", "method_label": "DeNetDM"}
    return Run(Path(path), {**results, "val/acc_unbiased": val, "test/acc_unbiased": test})


def test_a_cell_with_several_settings_shows_the_one_best_on_validation():
    # lr 0.1 is better on validation, lr 0.01 on test: the table must not peek at test
    runs = [
        _fake_run("a", 0, 0.1, 0.9, 0.5),
        _fake_run("b", 1, 0.1, 0.8, 0.6),
        _fake_run("c", 0, 0.01, 0.7, 0.9),
        _fake_run("d", 1, 0.01, 0.7, 0.9),
    ]
    table = build_table(Collection(runs=runs))
    (cell,) = table.cells.values()
    assert cell.values == pytest.approx([50.0, 60.0]) and cell.settings == 2
    assert "never the best test/acc_unbiased" in to_markdown(table)
    assert "(n=2, best of 2 settings)" in to_markdown(table)  # in the cell itself, not only in a note


def test_a_cell_is_a_setting_a_debug_run_gets_a_row_of_its_own():
    full = [_fake_run(path, seed, 0.1, 0.9, 0.5) for path, seed in (("a", 0), ("b", 1))]
    debug = _fake_run("c", 0, 0.1, 0.95, 0.1)  # better on validation: it must still not stand for the full runs
    debug.results["config"]["dataset"] |= {"subset": 1000}
    debug.results["config"]["stage2"] |= {"epochs": 1}
    for run in full:
        run.results["config"]["stage2"] |= {"epochs": 100}
    table = build_table(Collection(runs=[*full, debug]))
    assert sorted(c.values for c in table.cells.values()) == [[10.0], [50.0, 50.0]]
    assert all(c.settings == 1 for c in table.cells.values())
    text = to_markdown(table)
    assert "| DeNetDM [dataset.subset=1000, stage2.epochs=1] | 10.00 (n=1) |" in text
    assert "| DeNetDM [dataset.subset=null, stage2.epochs=100] | 50.00 ± 0.00 (n=2) |" in text


def test_a_cell_counts_its_runs_whose_deep_expert_collapsed():
    runs = [_fake_run(path, seed, 0.1, 0.9, 0.5) for path, seed in (("a", 0), ("b", 1), ("c", 2))]
    for run, verdict in zip(runs, (True, False, None)):  # None: too short to judge
        run.results["stage1/collapsed"] = verdict
    text = to_markdown(build_table(Collection(runs=runs)))
    assert "50.00 ± 0.00 (n=3, 1 collapsed)" in text and "k collapsed: k of the cell's runs" in text
    for run in runs:
        run.results["stage1/collapsed"] = False
    assert "collapsed" not in to_markdown(build_table(Collection(runs=runs)))


def test_last_epoch_reads_each_runs_curve_of_its_final_phase_not_its_selected_epoch():
    runs = []
    for seed, curve in ((0, [0.2, 0.6, 0.4]), (1, [0.3, 0.5, 0.5])):
        run = _fake_run(f"r{seed}.record.json", seed, 0.1, 0.9, max(curve))  # selected: the best epoch
        run.results["config"]["method"] = {"final": {"phase": "stage2", "head": "target"}}
        run.results["curves"] = {"stage2/target/test/acc_unbiased": curve, "stage1/shallow/test/acc": [0.1, 0.7]}
        runs.append(run)
    coll = Collection(runs=runs)
    assert build_table(coll).cells[next(iter(build_table(coll).cells))].values == pytest.approx([60.0, 50.0])
    last = build_table(coll, last_epoch=True)
    assert next(iter(last.cells.values())).values == pytest.approx([40.0, 50.0])
    assert "at the last epoch of the final phase" in to_markdown(last)
    staged = build_table(coll, "stage1/shallow/test/acc", last_epoch=True)  # a phase's own key: its own curve
    assert next(iter(staged.cells.values())).values == pytest.approx([70.0, 70.0])


def test_a_quick_run_beside_the_papers_number_is_flagged():
    from denetdm.reporting.tables import OFF_PRESET_MARK, add_published

    def run(name: str, **changes) -> Run:
        r = _fake_run(name, 0, 1e-3, 0.9, 0.8)
        cfg = r.results["config"]
        cfg["dataset"] |= {"name": "cmnist"}
        cfg["method"] = {"phases": {"stage1": {"schedule": "experts"}, "stage2": {"schedule": "target"}}}
        cfg["experts"] = {"epochs": 100, "batch_size": 64, "lr": 1e-3, "weight_decay": 1e-3}
        cfg["target"] = {"epochs": 100, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.0}
        for key, value in changes.items():
            node, leaf = key.split("__")
            cfg[node][leaf] = value
        return r

    paper = build_table(Collection(runs=[run("a")]))
    add_published(paper)
    assert OFF_PRESET_MARK not in to_markdown(paper)
    quick = build_table(Collection(runs=[run("b", dataset__subset=2000, target__epochs=2)]))
    add_published(quick)
    md = to_markdown(quick)
    assert f"(n=1) {OFF_PRESET_MARK}" in md and "(dataset.subset, target.epochs): not comparable" in md


def test_unknown_metric_and_missing_directory_are_one_line_errors(tmp_path):
    for args in (["table", str(SWEEPS), "--metric", "val/acc_typo"], ["table", str(tmp_path / "nope")]):
        proc = subprocess.run([sys.executable, "sweep.py", *args], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1


def test_best_reads_optimization_results_and_finds_the_run(capsys):
    out = _sweep(["best", str(SWEEPS / "depth_gap")], capsys)
    trials = [parse_line(line) for line in (SWEEPS / "depth_gap" / "trials.jsonl").read_text().splitlines()]
    top = max(trials, key=lambda t: t["value"])
    assert f"best value (val/acc_unbiased): {100 * top['value']:.2f} %" in out  # % as in tables
    assert f"best_trial: {top['number']}" in out
    assert f"model.shallow.depth={top['params']['model.shallow.depth']}" in out
    run = next(
        j
        for j in (SWEEPS / "depth_gap").iterdir()
        if j.is_dir() and json.loads((j / "results.json").read_text())["config"]["trial"]["number"] == top["number"]
    )
    assert f"best_run: depth_gap/{run.name}" in out


def test_best_reads_a_study_storage(tmp_path, capsys):
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    for value, depth in ((0.3, 2), (0.7, 4), (0.5, 3)):
        study.enqueue_trial({"model.shallow.depth": depth})
        trial = study.ask()
        trial.suggest_int("model.shallow.depth", 2, 4)
        study.tell(trial, value)
    out = _sweep(["best", "--storage", storage, "--study-name", "s"], capsys)
    assert "best value (objective): 0.7000" in out and "best_trial: 1" in out  # no run says which key
    assert "model.shallow.depth=4" in out


def test_plot_writes_pngs_that_show_data(tmp_path, capsys):
    import matplotlib.image as mpimg

    out = _sweep(["plot", str(SWEEPS / "depth_gap"), "--out", str(tmp_path)], capsys)
    names = {Path(line).name for line in out.split()}
    assert names == {"depth_heatmap.png", "history.png", "stage1_curves.png", "separation.png"}
    for name in names:
        img = mpimg.imread(tmp_path / name)
        assert img.shape[0] > 200 and img.shape[1] > 400
        assert img[..., :3].std() > 0.05  # not a blank canvas


@pytest.mark.slow  # draws Optuna's plots
def test_plot_adds_optunas_plots_of_the_sweeps_study(tmp_path, capsys):
    # the fixture keeps no study.db: rebuild it from trials.jsonl, as the sweep had it (depths searched)
    import shutil

    import matplotlib.image as mpimg
    import optuna
    from optuna.distributions import IntDistribution

    sweep = tmp_path / "sweep"
    shutil.copytree(SWEEPS / "depth_gap", sweep)
    study = optuna.create_study(study_name="depth_gap-synthetic", storage=f"sqlite:///{sweep / 'study.db'}")
    for line in (sweep / "trials.jsonl").read_text().splitlines():
        t = json.loads(line)
        shallow = t["params"]["model.shallow.depth"]  # the deep range follows the shallow depth, as depth_gap's
        dists = {"model.shallow.depth": IntDistribution(2, 5), "model.deep.depth": IntDistribution(shallow + 1, 6)}
        study.add_trial(optuna.trial.create_trial(params=t["params"], distributions=dists, value=t["value"]))
    out = _sweep(["plot", str(sweep), "--out", str(tmp_path / "plots")], capsys)
    names = {Path(line).name for line in out.split()}
    assert {"study_importances.png", "study_parallel_coordinates.png"} <= names
    for name in ("study_importances.png", "study_parallel_coordinates.png"):
        assert mpimg.imread(tmp_path / "plots" / name)[..., :3].std() > 0.05  # not a blank canvas
    # what the plots are drawn from: both depths (a dynamic range included), as whole layers, values in %
    from denetdm.reporting.plots import plotted

    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    copy = plotted(trials, 100)
    with pytest.warns(optuna.exceptions.ExperimentalWarning):  # Optuna marks PED-ANOVA experimental
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    assert set(optuna.importance.get_param_importances(copy, evaluator=evaluator)) == {
        "model.shallow.depth",
        "model.deep.depth",
    }
    assert all(type(d).__name__ == "CategoricalDistribution" for d in copy.trials[0].distributions.values())
    assert [t.value for t in copy.trials] == pytest.approx([100 * t.value for t in trials])


def test_labels_follow_the_objective_key_and_plots_come_as_pdf_or_svg(tmp_path, capsys):
    import matplotlib

    sweep = tmp_path / "seeds"
    shutil.copytree(SEEDS, sweep)
    for path in sweep.glob("*/results.json"):  # a label-free sweep: its objective is val/acc
        r = json.loads(path.read_text())
        path.write_text(json.dumps(r | {"objective_key": "val/acc", "objective": r["val/acc"]}))
    best = max(json.loads(p.read_text())["val/acc"] for p in sweep.glob("*/results.json"))
    assert f"best value (val/acc): {100 * best:.2f} %" in _sweep(["best", str(sweep)], capsys)
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text as text, to read the labels back
        out = _sweep(["plot", str(sweep), "--out", str(tmp_path / "svg"), "--format", "svg"], capsys)
    history = (tmp_path / "svg" / "history.svg").read_text()
    assert "objective, stage2 target: val/acc (%)" in history and "unbiased" not in history
    heatmap = (tmp_path / "svg" / "depth_heatmap.svg").read_text()  # each panel names the model it shows
    assert "objective, stage2 target: val/acc (%)" in heatmap and "stage2 target: val/acc_conflicting (%)" in heatmap
    _sweep(["plot", str(sweep), "--out", str(tmp_path / "pdf"), "--format", "pdf", "--dpi", "200"], capsys)
    assert {p.suffix for p in (tmp_path / "pdf").iterdir()} == {".pdf"} and len(out.split()) >= 2
    assert all(p.read_bytes().startswith(b"%PDF") for p in (tmp_path / "pdf").iterdir())


def test_history_has_a_best_so_far_line_per_method(tmp_path):
    from denetdm.reporting.plots import _history_points

    runs = [_fake_run(name, seed, 0.1, val, 0.5) for name, seed, val in (("a", 0, 0.9), ("b", 1, 0.8))]
    runs[1].results["method_label"] = "ERM"
    groups = {g for g, *_ in _history_points(Collection(runs=runs), tmp_path)}
    assert groups == {runs[0].method, "ERM"}


def test_a_selection_that_matches_nothing_is_a_non_zero_exit_with_one_line():
    proc = subprocess.run(
        [sys.executable, "sweep.py", "table", str(SEEDS), "--selection", "oracle"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and proc.stdout == "" and proc.stderr.count("\n") == 1
    assert "selection=oracle" in proc.stderr and "the runs there have selection=val" in proc.stderr


@pytest.mark.slow
def test_wandb_summary_run_offline(tmp_path):
    sweep = tmp_path / "depth_gap"
    subprocess.run(["cp", "-r", str(SWEEPS / "depth_gap"), str(sweep)], check=True)
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "sweep.py", "wandb", str(sweep)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = sweep.glob("wandb/offline-run-*/run-*.wandb")
    logged = read_run(path)
    assert logged["run"]["group"] == "depth_gap-synthetic" and logged["run"]["job_type"] == "sweep-summary"
    trials = [parse_line(line) for line in (sweep / "trials.jsonl").read_text().splitlines()]
    kinds = {k.split("/")[0]: h[k] for h in logged["history"] for k in h if k.endswith("/_type")}
    assert {"trials", "depth_heatmap", "history", "stage1_curves"} <= set(kinds)
    (table,) = path.parent.glob("files/media/table/trials_*.table.json")
    data = json.loads(table.read_text())
    assert len(data["data"]) == sum("job" in t for t in trials)  # the trained trials (not the repeats)
    assert "trial" in data["columns"]
    assert json.loads(logged["summary"]["best_value"]) == pytest.approx(max(t["value"] for t in trials))
    assert (sweep / "plots" / "history.png").exists()


def test_damaged_sweep_files_are_handled(tmp_path, capsys):
    sweep = tmp_path / "depth_gap"
    subprocess.run(["cp", "-r", str(SWEEPS / "depth_gap"), str(sweep)], check=True)
    with open(sweep / "trials.jsonl", "a") as f:
        f.write('{"number": 9, "sta')  # a line cut by a crash
    (sweep / "optimization_results.yaml").write_text("best_params: [unclosed\n")
    proc = subprocess.run([sys.executable, "sweep.py", "best", str(sweep)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and "damaged" in proc.stderr
    assert "Traceback" not in proc.stderr
    out = _sweep(["plot", str(sweep), "--out", str(tmp_path / "plots")], capsys)
    assert "history.png" in out


def collect_fixture() -> list[Run]:
    from denetdm.reporting.runs import collect

    return collect([SWEEPS]).runs


def _method_run(path: str, method: str, label: str, selection: str, test: float, seed: int = 0) -> Run:
    config = {
        "model": {"target": {"depth": 5}, "shallow": {"depth": 3}, "deep": {"depth": 5}},
        "seed": seed,
        "severity": {"level": 4},
        "dataset": {"name": "cmnist", "severity": 4, "conflict_pct": 1, "seed": seed},
        "method": {"name": method},
        "selection": selection,
    }
    results = {"config": config, "selection": selection, "stages": ["x"], "method": method, "method_label": label}
    results["depths"] = [5]
    return Run(Path(path), {**results, "objective": 0.5, "test/acc_unbiased": test})


def test_protocols_side_by_side_with_the_published_numbers():
    from denetdm.reporting.tables import add_published

    runs = [_method_run("a", "erm", "ERM", "val", 0.5), _method_run("b", "erm", "ERM", "val", 0.52, seed=1)]
    runs += [_method_run("c", "erm", "ERM", "val_nolabels", 0.4), _method_run("d", "lff", "LfF", "oracle", 0.7)]
    table = build_table(Collection(runs=runs), selection=["val", "val_nolabels", "oracle"])
    add_published(table)
    text = to_markdown(table)
    header = text.splitlines()[0]
    assert "val: cmnist sev4 1%" in header and "val_nolabels: cmnist sev4 1%" in header and "oracle: cmnist" in header
    erm = next(line for line in text.splitlines() if line.startswith("| ERM"))
    assert "51.00 ± 1.41 (n=2) | 50.34 | 40.00 (n=1) | 50.34 |" in erm  # ours, the paper's (Table 1: ERM 50.34)
    lff = next(line for line in text.splitlines() if line.startswith("| LfF"))
    assert "70.00 (n=1) | 74.01" in lff
    assert "chosen on the test set" in text


def test_a_run_without_the_final_model_says_so_instead_of_nan():
    from denetdm.reporting.summary import summary_table

    results = {"objective_key": "val/acc_unbiased", "selection": "val", "objective": float("nan")}
    text = summary_table(results | {"config": {"method": {"final": {"phase": "stage2", "head": "target"}}}})
    assert "nan" not in text and "none: this run did not train the final model (stage2/target)" in text


def test_a_stage1_only_run_is_checked_against_its_preset_schedule():
    # a stage-1 run's fingerprint leaves its stage-2 phase null (hparams_search=depth_pairs makes such runs)
    from denetdm.reporting.tables import off_preset

    phases = {"stage1": {"_target_": "denetdm.methods.DeNetDMStage1", "schedule": "experts"}, "stage2": None}
    experts = {"epochs": 100, "batch_size": 64, "lr": 1e-3, "weight_decay": 1e-3}  # conf/dataset/cmnist.yaml's
    config = {"dataset": {"name": "cmnist"}, "method": {"phases": phases}, "experts": experts}
    assert off_preset(Run(Path("r"), {"config": config})) == []
    experts["epochs"] = 2
    assert off_preset(Run(Path("r"), {"config": config})) == ["experts.epochs"]


def test_a_method_with_its_own_dataset_preset_is_checked_against_that_schedule():
    # DFA's Colored MNIST runs follow its authors' schedule (conf/method_dataset/dfa_cmnist.yaml), not the paper's
    from denetdm.reporting.tables import off_preset

    phases = {"dfa": {"_target_": "denetdm.methods.DFA", "schedule": "target"}}
    decay = {"name": "step", "warmup_epochs": 0, "delay_epochs": 43.48, "step_epochs": 43.48, "gamma": 0.5}
    target = {"epochs": 217, "batch_size": 256, "lr": 0.01, "weight_decay": 0.0, "drop_last": True}
    config = {"dataset": {"name": "cmnist"}, "method": {"name": "dfa", "phases": phases}}
    assert off_preset(Run(Path("r"), {"config": config | {"target": target | {"lr_schedule": decay}}})) == []
    slower = target | {"lr": 1e-3, "lr_schedule": decay | {"gamma": 0.1}}
    assert off_preset(Run(Path("r"), {"config": config | {"target": slower}})) == [
        "target.lr",
        "target.lr_schedule.gamma",
    ]
    config["method"]["name"] = "lff"  # LfF has no preset of its own: the paper's 100 epochs of 64
    assert "target.epochs" in off_preset(Run(Path("r"), {"config": config | {"target": target}}))


def _stage1_record(tmp_path, seed: int, deep: float, aligned: float, epochs: int = 5) -> None:
    """A stage-1 store record whose deep expert's val pred_entropy is `deep` (the shallow one's 1.0) at its
    selected epoch 2, and right on `aligned` of the aligned test images."""
    curves = {"stage1/deep/val/pred_entropy": [1.0, deep] + [1.0] * (epochs - 2)}
    curves["stage1/shallow/val/pred_entropy"] = [1.0] * epochs
    rec = {"format": 1, "config": {"seed": seed}, "method": "denetdm_stage1", "seed": seed, "depths": [3, 7]}
    rec |= {"curves": curves, "stage1/selected_epoch": 2, "stage1/deep/test/acc_aligned": aligned}
    (tmp_path / "store").mkdir(exist_ok=True)
    (tmp_path / "store" / f"r{seed}.record.json").write_text(json.dumps(rec))


def test_the_detector_block_counts_hits_misses_and_false_alarms_at_the_selected_epoch(tmp_path):
    from denetdm.reporting.docgen import regenerate

    for seed, deep, aligned in ((0, 0.5, 0.3), (1, 0.95, 0.4), (2, 0.8, 0.99), (3, 0.99, 0.99)):
        _stage1_record(tmp_path, seed, deep, aligned)
    _stage1_record(tmp_path, 4, 0.5, 0.3, epochs=2)  # too short to judge
    text = regenerate(f"<!-- detector: {tmp_path / 'store'} -->\n<!-- end -->\n")
    assert "| store | 0 | 0.500 | True | 30.00 | hit |" in text.replace("denetdm_stage1 | [3, 7] | ", "")
    assert "| 1 | 0.950 | False | 40.00 | miss |" in text and "| 2 | 0.800 | True | 99.00 | false alarm |" in text
    assert "| 4 | 0.500 | None | 30.00 | not judged |" in text
    assert "5 stage-1 runs: 1 hit, 1 miss, 1 false alarm, 1 not judged, 1 rightly passed" in text


def test_the_heatmap_of_runs_stopped_before_the_final_phase_shows_the_head_selection_followed(tmp_path, capsys):
    import matplotlib

    store = ROOT / "results" / "cmnist_stage1_rerun"  # stage=stage1 of DeNetDM
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        _sweep(["plot", str(store), "--out", str(tmp_path), "--format", "svg"], capsys)
    heatmap = (tmp_path / "depth_heatmap.svg").read_text()
    assert "stage1/shallow: stage1/shallow/val/acc_conflicting (%)" in heatmap
