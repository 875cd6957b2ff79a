"""The depth_gap search space samples only legal pairs for every backbone pair in conf/backbone_depth/."""

import optuna
import pytest

from denetdm.errors import ConfigError
from denetdm.models import build_backbone
from denetdm.search import depth_gap_space

from conftest import CONF, compose_cfg

PAIRS = sorted(p.stem for p in (CONF / "backbone_depth").glob("*.yaml"))
SHAPE = {
    "mlp": (3, 28, 28),
    "cnn3_resnet20": (3, 32, 32),
    "cnn4_resnet18": (3, 128, 128),
}  # BFFHQ: 8 unpadded convs fit 128


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
