"""The depth_gap search space samples only legal pairs for every backbone pair in conf/backbone_depth/."""

import optuna
import pytest

from denetdm.errors import ConfigError
from denetdm.models import build_backbone
from denetdm.sweeps.search import depth_gap_space

from conftest import CONF, compose_cfg

PAIRS = sorted(p.stem for p in (CONF / "backbone_depth").glob("*.yaml"))
SHAPE = {
    "mlp": (3, 28, 28),
    "cnn3_resnet20": (3, 32, 32),
    "cnn4_resnet18": (3, 128, 128),
}  # BFFHQ: 8 unpadded convs fit 128


@pytest.mark.slow  # builds every sampled network (ResNets included)
@pytest.mark.parametrize("pair", PAIRS)
def test_every_sampled_pair_is_legal_and_builds(pair):
    cfg = compose_cfg([f"backbone_depth={pair}", "hparams_search=depth_gap"])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    grids = {k: range(cfg.search[k].low, cfg.search[k].high + 1, cfg.search[k].step) for k in ("shallow", "deep")}
    seen, built = set(), {}
    for _ in range(30):
        trial = study.ask()
        depth_gap_space(cfg, trial)
        shallow, deep = trial.params["model.shallow.depth"], trial.params["model.deep.depth"]
        assert deep > shallow and shallow in grids["shallow"] and deep in grids["deep"]
        seen.add((shallow, deep))
        study.tell(trial, 0.0)
        for part, depth in (("shallow", shallow), ("deep", deep)):
            spec = {**dict(cfg.model[part]), "depth": depth, "pretrained": False}
            if "pretrained" not in cfg.model[part]:
                spec.pop("pretrained")
            key = (spec["name"], depth)
            if key not in built:  # the backbone accepts this depth
                built[key] = build_backbone(spec, SHAPE.get(pair, (3, 64, 64)))
    assert len(seen) > 3  # the space is explored, not one pair


def test_a_search_range_without_a_deeper_choice_is_a_clear_error():
    cfg = compose_cfg(["hparams_search=depth_gap", "search.shallow.low=6", "search.deep.high=5"])
    trial = optuna.create_study().ask()
    with pytest.raises(ConfigError, match="search.deep"):
        depth_gap_space(cfg, trial)


def _sampled_pairs(overrides: list[str], n: int = 40) -> set[tuple[int, int]]:
    cfg = compose_cfg(["hparams_search=depth_gap", *overrides])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    pairs = set()
    for _ in range(n):
        trial = study.ask()
        depth_gap_space(cfg, trial)
        pairs.add((trial.params["model.shallow.depth"], trial.params["model.deep.depth"]))
        study.tell(trial, 0.0)
    return pairs


def test_equal_depths_are_sampled_only_when_allowed():
    ranges = ["search.shallow.low=2", "search.shallow.high=4", "search.deep.low=2", "search.deep.high=4"]
    assert all(d > s for s, d in _sampled_pairs(ranges))
    allowed = _sampled_pairs([*ranges, "search.allow_equal=true"])
    assert all(d >= s for s, d in allowed) and any(d == s for s, d in allowed)
    assert (4, 4) in allowed  # the top shallow depth is legal once an equal deep depth is
    with pytest.raises(ConfigError, match="search.allow_equal"):
        _sampled_pairs([*ranges, "search.allow_equal=maybe"], n=1)


@pytest.mark.slow  # draws the plots
def test_equal_depth_runs_are_marked_in_tables_and_plots(tmp_path):
    from denetdm.reporting.plots import heatmap, separation_plot
    from denetdm.reporting.runs import collect
    from denetdm.reporting.tables import EQUAL_DEPTH_MARK, build_table, runs_table
    from denetdm.training.pipeline import train

    from conftest import TINY

    for s, d in ((2, 2), (2, 4)):
        args = [*TINY, "backbone_depth=mlp", f"model.shallow.depth={s}", f"model.deep.depth={d}", "stage=stage1"]
        results = train(compose_cfg([*args, "experts.epochs=1"]), tmp_path / f"{s}-{d}")
        sep = results["stage1/shallow/val/acc_conflicting"] - results["stage1/deep/val/acc_conflicting"]
        assert results["stage1/separation"] == pytest.approx(sep)
    coll = collect([tmp_path])
    table = build_table(coll, "stage1/shallow/test/acc_conflicting", ["val"])
    assert sorted(table.row_label(r) for r in table.rows) == sorted(
        ["DeNetDM (2, 2)" + EQUAL_DEPTH_MARK, "DeNetDM (2, 4)"]
    )
    columns, rows = runs_table(coll)
    assert sorted(r[columns.index("equal_depth")] for r in rows) == [False, True]
    assert heatmap(coll, tmp_path / "h.png") is not None and separation_plot(coll, tmp_path / "s.png") is not None
