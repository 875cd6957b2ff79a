"""Every yaml in every config group composes and its objects instantiate (new entries are tested for free)."""

import pytest
import torch
import torch.nn as nn
from hydra.utils import instantiate
from omegaconf import OmegaConf

from denetdm.cli import missing_plugin
from denetdm.errors import ConfigError
from denetdm.models import build_backbone

from conftest import CONF, compose_cfg

CASES = [(g.name, f.stem) for g in sorted(CONF.iterdir()) if g.is_dir() for f in sorted(g.glob("*.yaml"))]


def _case(group: str, option: str):
    # optional launchers compose only where their plugin is installed (make install-launchers; CI has them)
    req = missing_plugin(option) if group == "launcher" else None
    return pytest.param(group, option, id=f"{group}={option}",
                        marks=pytest.mark.skipif(bool(req), reason=f"optional plugin {req} not installed"))  # fmt: skip


def test_groups_named_in_the_contract_exist():
    groups = {g for g, _ in CASES}
    assert {"dataset", "severity", "backbone_depth", "stage", "optimizer", "logger", "experiment"} <= groups
    assert {o for g, o in CASES if g == "severity"} == {"1", "2", "3", "4"}


@pytest.mark.parametrize("group,option", [_case(g, o) for g, o in CASES])
def test_option_composes_and_instantiates(group, option, tmp_path):
    cfg = compose_cfg([f"{group}={option}"])
    OmegaConf.resolve(cfg)  # every interpolation resolves
    if group not in ("dataset", "experiment"):
        assert cfg[group] is not None if group in cfg else True
    dataset = instantiate(cfg.dataset)  # validates its arguments, loads nothing
    assert dataset.name == cfg.dataset.name
    params = nn.Linear(3, 2).parameters()
    optimizer = instantiate(cfg.optimizer)(params, lr=1e-3, weight_decay=0.0)
    assert isinstance(optimizer, torch.optim.Optimizer)
    logger = instantiate(cfg.logger, _partial_=True)(run_dir=str(tmp_path), run_config={"a": 1})
    assert hasattr(logger, "log") and hasattr(logger, "summary")
    for part in ("deep", "shallow", "target"):
        spec = OmegaConf.to_container(cfg.model[part])
        try:
            model = build_backbone(spec, (3, 32, 32))
        except ConfigError as e:  # pretrained weights without the network: one clear error, at once
            assert spec.get("pretrained") and "pretrained" in str(e)
            continue
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, model.num_features)
    assert cfg.stage.name in ("full", "stage1", "stage2", "eval")
    assert cfg.selection in ("val", "test", "last")


def test_defaults_match_the_contract():
    cfg = compose_cfg()
    assert cfg.dataset.name == "synthetic" and cfg.severity.level == 4 and cfg.stage.name == "full"
    assert cfg.selection == "val" and cfg.device == "auto" and cfg.resume is True and cfg.seed == 0
    assert cfg.dataset.conflict_pct == 1
    assert (cfg.model.shallow.depth, cfg.model.deep.depth, cfg.model.target.depth) == (3, 5, 5)
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer._partial_


def test_target_depth_follows_deep_unless_set():
    assert compose_cfg(["model.deep.depth=7"]).model.target.depth == 7
    assert compose_cfg(["model.deep.depth=7", "model.target.depth=4"]).model.target.depth == 4


def test_paper_experiment_carries_the_paper_hyperparameters():
    cfg = compose_cfg(["experiment=paper_cmnist"])
    assert cfg.dataset.name == "cmnist" and cfg.dataset.conflict_pct == 1 and cfg.severity.level == 4
    assert (cfg.stage1.epochs, cfg.stage2.epochs) == (100, 100)
    assert (cfg.stage1.lr, cfg.stage2.lr, cfg.stage1.batch_size) == (1e-3, 1e-3, 64)
    assert (cfg.stage1.weight_decay, cfg.stage2.weight_decay) == (1e-3, 0.0)
    assert (cfg.stage2.poe_weight, cfg.stage2.dist_weight, cfg.stage2.temperature) == (1.0, 1.0, 2.0)
