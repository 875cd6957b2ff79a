"""Linear probes and effective rank (denetdm.analysis.probes)."""

import pytest
import torch

from denetdm.analysis.probes import class_mean_rank, effective_rank, probe_accuracy
from denetdm.errors import ConfigError
from denetdm.files.jsonlines import JsonLines
from denetdm.training.pipeline import train

from conftest import TINY, compose_cfg, run_cli


def _separable(n: int = 600, d: int = 20, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centres = torch.randn(classes, d, generator=gen) * 5
    return centres[y] + torch.randn(n, d, generator=gen) * 0.5, y


def test_probe_decodes_separable_features_and_not_shuffled_labels():
    x, y = _separable()
    assert probe_accuracy(x, y, 4) > 0.98
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    assert abs(probe_accuracy(x, shuffled, 4) - 0.25) < 0.1  # chance: nothing to decode


def test_probe_is_deterministic_and_seeded():
    x, y = _separable()
    noisy = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(5)) * 6
    assert probe_accuracy(noisy, y, 4, seed=3) == probe_accuracy(noisy, y, 4, seed=3)
    with pytest.raises(ConfigError, match="at least 4 samples"):
        probe_accuracy(x[:3], y[:3], 4)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_effective_rank_of_a_rank_k_matrix_is_about_k(k):
    gen = torch.Generator().manual_seed(k)
    q, _ = torch.linalg.qr(torch.randn(200, k, generator=gen, dtype=torch.float64))
    r, _ = torch.linalg.qr(torch.randn(50, k, generator=gen, dtype=torch.float64))
    equal = (q - q.mean(0)) @ r.T  # k equal singular values (up to the centring)
    assert effective_rank(equal) == pytest.approx(k, rel=0.05)
    lowrank = torch.randn(200, k, generator=gen) @ torch.randn(k, 50, generator=gen)
    assert 0.5 * k <= effective_rank(lowrank) <= k + 1e-6  # unequal singular values: at most k
    assert effective_rank(torch.zeros(10, 5)) == 0.0


def test_class_mean_rank_counts_the_directions_that_separate_the_values():
    x, y = _separable(classes=4)
    assert 2.0 < class_mean_rank(x, y, 4) <= 3.0 + 1e-6  # 4 centred means span at most 3 directions
    flat = torch.zeros(len(y), 20)
    flat[:, 0] = y.float()  # the values lie on one line
    assert class_mean_rank(flat, y, 4) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow
def test_probes_every_k_epochs_are_recorded_deterministic_and_do_not_change_training(tmp_path):
    args = [*TINY, "experts.epochs=4", "target.epochs=1"]
    plain = train(compose_cfg(args), tmp_path / "plain")
    probed = [train(compose_cfg([*args, "probe.every=2"]), tmp_path / f"p{i}") for i in range(2)]
    records = [list(JsonLines(tmp_path / f"p{i}" / "metrics.jsonl").read()) for i in range(2)]
    stage1 = [r for r in records[0] if r["stage"] == "stage1"]
    keys = {f"stage1/{h}/probe/{a}" for h in ("shallow", "deep") for a in ("y", "b")}
    assert [bool(keys <= set(r)) for r in stage1] == [False, True, False, True]  # epochs 2 and 4
    assert all(0.0 <= stage1[1][k] <= 1.0 for k in keys)

    def untimed(r: dict) -> dict:
        return {k: v for k, v in r.items() if "/time/" not in k}

    assert [untimed(r) for r in records[0]] == [untimed(r) for r in records[1]]  # same config, same numbers
    assert probed[0]["test/acc_unbiased"] == plain["test/acc_unbiased"]  # probes never touch training


def test_bad_probe_values_are_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="probe.every"):
        train(compose_cfg([*TINY, "probe.every=-1"]), tmp_path / "a")
    with pytest.raises(ConfigError, match="probe.split"):
        train(compose_cfg([*TINY, "probe.split=val_biased"]), tmp_path / "b")


@pytest.mark.slow
def test_sweep_plot_draws_the_probe_curves_of_a_run_and_of_seeds(tmp_path):
    from denetdm.reporting.plots import probe_curves
    from denetdm.reporting.runs import collect

    for seed in (0, 1):
        train(
            compose_cfg([*TINY, "stage=stage1", "experts.epochs=2", "probe.every=1", f"seed={seed}"]),
            tmp_path / "sweep" / str(seed),
        )
    assert probe_curves(collect([tmp_path / "sweep" / "0"]), tmp_path / "one.png") is not None  # a single run
    out = probe_curves(collect([tmp_path / "sweep"]), tmp_path / "two.png")  # mean and band over the seeds
    assert out is not None and out.stat().st_size > 10_000
    train(compose_cfg([*TINY, "stage=stage1", "experts.epochs=1"]), tmp_path / "plain")
    assert probe_curves(collect([tmp_path / "plain"]), tmp_path / "none.png") is None  # no probes, no figure


@pytest.mark.slow
def test_the_depth_probes_sweep_measures_each_depth_untrained_and_trained_and_plots_them(tmp_path):
    import json

    from denetdm.reporting.plots import depth_probes
    from denetdm.reporting.runs import collect

    sizes = ["dataset.train_size=300", "dataset.test_size=100", "dataset.val_size=100", "probe.steps=20"]
    args = ["-m", "hparams_search=depth_probes", "dataset=synthetic", *sizes, "model.deep.depth=1,2,3", "seed=0,1"]
    proc = run_cli([*args, "target.epochs=1", "logger=none", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = [json.loads((tmp_path / "sweep" / str(j) / "results.json").read_text()) for j in range(6)]
    assert sorted((r["depths"][0], r["seed"]) for r in runs) == [(d, s) for d in (1, 2, 3) for s in (0, 1)]
    for j in range(6):  # epoch 0 (untrained) and epoch 1 (trained), each with the probes and the ranks
        rows = [r for r in JsonLines(tmp_path / "sweep" / str(j) / "metrics.jsonl").read() if "erm/target/probe/y" in r]
        assert [r["epoch"] for r in rows] == [0, 1]
        assert all(
            0 <= r["erm/target/probe/b"] <= 1 and r["erm/target/probe/rank"] >= r["erm/target/probe/rank_y"] > 0
            for r in rows
        )
        if runs[j]["depths"] == [1]:  # the linear model on the inputs: nothing below the head, the same features
            assert rows[0]["erm/target/probe/rank"] == rows[1]["erm/target/probe/rank"]
    assert depth_probes(collect([tmp_path / "sweep"]), tmp_path / "d.png").stat().st_size > 10_000


def test_probe_at_init_must_be_true_or_false(tmp_path):
    with pytest.raises(ConfigError, match="probe.at_init must be true or false"):
        train(compose_cfg([*TINY, "probe.every=1", "probe.at_init=sometimes"]), tmp_path)


def _collapse_cfg(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from denetdm.cli import CONF

    tiny = ["dataset=synthetic", "dataset.train_size=640", "dataset.test_size=100", "dataset.val_size=100"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="collapse", overrides=[*tiny, "logger=none", *overrides])


def test_collapse_analysis_measures_the_signal_and_the_decay_layer_by_layer(tmp_path):
    import json

    from denetdm.analysis.collapse import run
    from denetdm.reporting.docgen import _mechanism

    cfg = _collapse_cfg(["collapse.depths=[3,8]", "collapse.seeds=1", "collapse.arms=[l2,none]", "collapse.epochs=1"])
    cfg.collapse.at = [0, 5]
    result = run(cfg)
    traces = {(r["depth"], r["arm"]): r["trace"] for r in result["runs"]}
    assert set(traces) == {(3, "l2"), (3, "none"), (8, "l2"), (8, "none")}
    start = {k: t[0] for k, t in traces.items()}
    assert len(start[8, "l2"]["layers"]) == 7 and len(start[3, "l2"]["layers"]) == 2  # hidden Linears + the first
    # torch's default init: the deeper the expert, the less its output depends on the input
    assert start[8, "l2"]["layers"][-1]["input_share"] < start[3, "l2"]["layers"][-1]["input_share"]
    assert start[8, "l2"]["layers"][-1]["input_share"] < 1e-3
    assert start[8, "none"]["layers"][0]["decay_dominated"] == 0 < start[8, "l2"]["layers"][0]["decay_dominated"]
    assert traces[8, "l2"][1]["layers"][0]["step_rel"] > 0  # Adam moved the weights between the measurements
    path = tmp_path / "collapse.json"
    path.write_text(json.dumps(result))
    table = _mechanism([str(path)])
    assert "| init default, norm none | 8 | l2 |" in table and "means over 1 seeds; end: step 5" in table


def test_collapse_analysis_bad_values_are_one_error(tmp_path):
    from denetdm.analysis.collapse import run
    from denetdm.errors import ConfigError

    for bad, match in (
        ("collapse.depths=[1]", "at least 2"),
        ("collapse.arms=[adam]", "arms"),
        ("collapse.seeds=0", "seeds"),
    ):
        with pytest.raises(ConfigError, match=match):
            run(_collapse_cfg([bad]))
