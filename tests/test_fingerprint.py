"""One fingerprint of a run: the whole resolved config minus a documented list of keys that cannot change
the numbers. Resume, sweep.py's duplicate check and the grouping of runs into settings all use it."""

import copy
import functools
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from denetdm.errors import ConfigError
from denetdm.fingerprint import NOT_NUMERIC, fingerprint, last_phase
from denetdm.reporting.runs import Run

from conftest import compose_cfg


@functools.cache
def _composed() -> dict:
    return OmegaConf.to_container(compose_cfg(["dataset=ccifar10"]), resolve=True)


def _config() -> dict:
    return copy.deepcopy(_composed())


def _set(config: dict, dotted: str, value: object) -> dict:
    node = config
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return config


def test_a_new_config_key_counts_by_default():
    for stage in ("stage1", "stage2"):
        assert fingerprint(_set(_config(), "brand_new_key", 1), stage) != fingerprint(_config(), stage)
        assert fingerprint(_set(_config(), "dataset.new_option", 1), stage) != fingerprint(_config(), stage)


@pytest.mark.parametrize("key", NOT_NUMERIC)
def test_the_listed_keys_do_not_change_it(key):
    for stage in ("stage1", "stage2"):
        assert fingerprint(_set(_config(), key, "something else"), stage) == fingerprint(_config(), stage), key


@pytest.mark.parametrize(
    "key,value",
    [
        ("amp", True),
        ("device", "cuda"),
        ("seed", 3),
        ("dataset.severity", 2),
        ("dataset.conflict_pct", 5),
        ("optimizer.fused", False),
        ("experts.lr", 0.1),
        ("model.shallow.depth", 2),
        ("selection", "test"),
    ],
)
def test_keys_that_change_the_numbers_change_it(key, value):
    for stage in ("stage1", "stage2"):
        assert fingerprint(_set(_config(), key, value), stage) != fingerprint(_config(), stage), key


def test_a_phase_ignores_what_its_method_declares_unread_after_it():
    unread = _config()["method"]["unread"]["stage1"]  # DeNetDM's yaml: stage 1 reads nothing of the target
    assert "model.target" in unread
    for key in unread:
        assert fingerprint(_set(_config(), key, "x"), "stage1") == fingerprint(_config(), "stage1")
        assert fingerprint(_set(_config(), key, "x"), "stage2") != fingerprint(_config(), "stage2")
    assert fingerprint(_set(_config(), "method.phases.stage2.schedule", "x"), "stage1") == fingerprint(
        _config(), "stage1"
    )
    declared = _set(_config(), "method.unread", {"stage1": ["dataset.severity"]})
    base = fingerprint(declared, "stage1")
    assert fingerprint(_set(copy.deepcopy(declared), "dataset.severity", 9), "stage1") == base
    assert fingerprint(_set(copy.deepcopy(declared), "model.target.depth", 9), "stage1") != base


def test_a_record_without_stages_stops_after_its_methods_last_phase():
    assert last_phase(_config(), None) == "stage2" and last_phase(_config(), ["stage1"]) == "stage1"
    erm = OmegaConf.to_container(compose_cfg(["method=erm"]), resolve=True)
    assert last_phase(erm, []) == "erm"


@pytest.mark.parametrize("value", [{"stage3": ["target"]}, {"stage1": "target"}, ["target"], {"stage1": [1]}])
def test_a_wrong_unread_is_one_config_error(value, tmp_path):
    from omegaconf import open_dict

    from denetdm.training.plan import plan

    cfg = compose_cfg([])
    with open_dict(cfg):
        cfg.method.unread = value
    with pytest.raises(ConfigError, match="method.unread must map phases"):
        plan(cfg, tmp_path)


def test_runs_and_tables_use_the_same_function():
    config = _config()
    run = Run(Path("r"), {"config": config, "stages": ["stage1", "stage2"], "selection": "val"})
    assert json.loads(run.fingerprint) == fingerprint(config, "stage2")
    other_seed = Run(Path("s"), {"config": _set(_config(), "seed", 9), "stages": ["stage1", "stage2"]})
    assert other_seed.fingerprint != run.fingerprint
    _set(other_seed.results["config"], "dataset.seed", config["dataset"]["seed"])
    assert other_seed.setting == run.setting  # the same setting: repeats over seeds
    stage1_only = Run(Path("t"), {"config": _set(_config(), "target.lr", 0.5), "stages": ["stage1"]})
    assert json.loads(stage1_only.fingerprint) == fingerprint(config, "stage1")
