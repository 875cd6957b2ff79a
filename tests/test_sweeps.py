"""Sweeps through `python run.py -m hparams_search=...` (Optuna and the basic sweeper)."""

import json

import pytest
import yaml

from conftest import TINY, run_cli

pytestmark = pytest.mark.slow


def _jobs(sweep_dir):
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir() and (p / "results.json").exists())


def test_depth_gap_samples_only_legal_pairs_and_records_the_best(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "hparams_search=depth_gap", "hydra.sweeper.n_trials=3", *TINY, "stage1.epochs=1",
                    "stage2.epochs=1", f"hydra.sweep.dir={sweep}"])  # fmt: skip
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
    proc = run_cli(["-m", "hparams_search=seeds", *TINY, "seed=0,1", "dataset.conflict_pct=1,5", "stage1.epochs=1",
                    "stage2.epochs=1", f"hydra.sweep.dir={sweep}"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    combos = {(r["seed"], r["config"]["dataset"]["conflict_pct"])
              for r in (json.loads((j / "results.json").read_text()) for j in _jobs(sweep))}  # fmt: skip
    assert combos == {(0, 1), (0, 5), (1, 1), (1, 5)}
