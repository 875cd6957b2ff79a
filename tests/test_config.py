"""Every yaml in every config group composes and its objects instantiate (new entries are tested for free)."""

import pytest
import torch
import torch.nn as nn
from hydra.utils import instantiate
from omegaconf import OmegaConf

from denetdm.cli import missing_plugin
from denetdm.errors import ConfigError
from denetdm.models import build_backbone

from conftest import CONF, ROOT, compose_cfg

CASES = [(g.name, f.stem) for g in sorted(CONF.iterdir()) if g.is_dir() for f in sorted(g.glob("*.yaml"))]


def _case(group: str, option: str):
    # optional launchers compose only where their plugin is installed (make install-launchers; CI has them)
    req = missing_plugin(option) if group == "launcher" else None
    return pytest.param(
        group,
        option,
        id=f"{group}={option}",
        marks=pytest.mark.skipif(bool(req), reason=f"optional plugin {req} not installed"),
    )


def test_groups_named_in_the_contract_exist():
    groups = {g for g, _ in CASES}
    assert {"dataset", "severity", "backbone_depth", "stage", "optimizer", "logger", "experiment"} <= groups
    assert {o for g, o in CASES if g == "severity"} == {"1", "2", "3", "4"}


def _leaves(node: object, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        return {k: v for key, sub in node.items() for k, v in _leaves(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def _option_values(group: str, option: str) -> dict[str, object]:
    """The values an option's yaml sets, by their path in the composed config (its defaults list and hydra
    node left out)."""
    path = CONF / group / f"{option}.yaml"
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    node = {k: v for k, v in node.items() if k not in ("defaults", "hydra")}
    first = path.read_text().splitlines()[0]
    package = first.removeprefix("# @package ").strip() if first.startswith("# @package ") else group
    return _leaves(node if package == "_global_" else {package: node})


@pytest.mark.parametrize("group,option", [_case(g, o) for g, o in CASES])
def test_option_composes_and_instantiates(group, option, tmp_path):
    cfg = compose_cfg([f"{group}={option}"])
    # every value the option sets reaches the composed config (nothing later in the defaults list hides it)
    composed = _leaves(OmegaConf.to_container(cfg, resolve=False))
    for key, value in _option_values(group, option).items():
        assert composed.get(key, "<absent>") == value, f"{group}={option} sets {key}={value!r}"
    OmegaConf.resolve(cfg)  # every interpolation resolves
    dataset = instantiate(cfg.dataset)  # validates its arguments, loads nothing
    assert dataset.name == cfg.dataset.name
    params = nn.Linear(3, 2).parameters()
    optimizer = instantiate(cfg.optimizer)(params, lr=1e-3, weight_decay=0.0)
    assert isinstance(optimizer, torch.optim.Optimizer)
    logger = instantiate(cfg.logger, _partial_=True)(run_dir=str(tmp_path), run_config=OmegaConf.to_container(cfg))
    assert hasattr(logger, "log") and hasattr(logger, "summary")
    size = 48 if cfg.model.shallow.name == "cnn_bffhq" else 32  # the BFFHQ expert has no padding: >= 42 pixels
    for part in ("deep", "shallow", "target"):
        spec = OmegaConf.to_container(cfg.model[part])
        try:
            model = build_backbone(spec, (3, size, size))
        except ConfigError as e:  # pretrained weights without the network: one clear error, at once
            assert spec.get("pretrained") and "pretrained" in str(e)
            continue
        assert model(torch.rand(2, 3, size, size)).shape == (2, model.num_features)
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


# docs/protocols.md §6: (lr, batch size, weight decay, epochs) per stage, then poe_weight, dist_weight, T
PAPER = {
    "cmnist": ((1e-3, 64, 1e-3, 100), (1e-3, 64, 0.0, 100), (1.0, 1.0, 2.0)),
    "ccifar10": ((1e-3, 256, 1e-3, 100), (1e-4, 256, 0.0, 200), (1.0, 1.0, 2.0)),
    "bffhq": ((1e-3, 64, 0.0, 10), (1e-4, 64, 0.0, 100), (1.0, 0.0, 2.0)),
}
# the experts (shallow, deep) and the target of each paper setting
PAPER_MODELS = {
    "cmnist": (("mlp", 3), ("mlp", 5), ("mlp", 5, None)),
    "ccifar10": (("cnn", 3), ("resnet_cifar", 20), ("resnet", 18, True)),
    "bffhq": (("cnn_bffhq", 4), ("resnet", 18), ("resnet", 18, True)),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_experiment_carries_the_paper_hyperparameters(name):
    cfg = compose_cfg([f"experiment=paper_{name}"])
    assert cfg.dataset.name == name and cfg.severity.level == 4 and cfg.dataset.conflict_pct in (1, 0.5)
    for stage, want in zip(("experts", "target"), PAPER[name][:2]):
        node = cfg[stage]
        assert (node.lr, node.batch_size, node.weight_decay, node.epochs) == want, stage
        assert isinstance(node.epochs, int) and isinstance(node.batch_size, int)
    assert (cfg.method.poe_weight, cfg.method.dist_weight, cfg.method.temperature) == PAPER[name][2]
    shallow, deep, target = PAPER_MODELS[name]
    assert (cfg.model.shallow.name, cfg.model.shallow.depth) == shallow
    assert (cfg.model.deep.name, cfg.model.deep.depth) == deep
    assert (cfg.model.target.name, cfg.model.target.depth, cfg.model.target.get("pretrained")) == target
    assert cfg.selection == "val" and cfg.optimizer._target_ == "torch.optim.Adam"
    # the reference's checkpoint rules: stage 1 the shallow expert's conflicting accuracy; stage 2 the target's
    # unbiased accuracy, except on BFFHQ (its conflicting accuracy)
    assert cfg.experts.select == "shallow/acc_conflicting"
    assert cfg.target.select == ("target/acc_conflicting" if name == "bffhq" else "target/acc_unbiased")


@pytest.mark.parametrize("overrides", [["dataset=bffhq"], ["experiment=paper_bffhq"]])
def test_bffhq_stage2_selects_on_conflicting_accuracy_in_both_presets(overrides):
    assert compose_cfg(overrides).target.select == "target/acc_conflicting"


def test_every_protocol_citation_names_a_section_of_the_document():
    import re

    headings = set(re.findall(r"^## (\d+)\. ", (ROOT / "docs" / "protocols.md").read_text(), re.M))
    cited = {}
    for path in [
        *ROOT.glob("*.py"),
        *ROOT.glob("denetdm/**/*.py"),
        *ROOT.glob("conf/**/*.yaml"),
        *ROOT.glob("tests/*.py"),
    ]:
        text = path.read_text()
        old = "PROTOCOLS" + " section"  # the old citation of a document outside the repository
        assert old not in text, f"{path} cites a document that is not in the repository"
        for line in text.splitlines():
            if "docs/protocols.md" in line:
                for number in re.findall(r"§(\d+)", line):
                    cited.setdefault(number, path)
    assert len(cited) >= 5
    missing = {n: str(p) for n, p in cited.items() if n not in headings}
    assert not missing, f"cited sections without a heading in docs/protocols.md: {missing}"


def test_the_sweeper_plugin_is_found_by_hydra_without_importing_optuna():
    import subprocess
    import sys

    code = (
        "import sys; from hydra.core.plugins import Plugins; from hydra.plugins.sweeper import Sweeper; "
        "names = [p.__name__ for p in Plugins.instance().discover(Sweeper)]; "
        "print('DenetdmOptunaSweeper' in names, 'optuna' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["True", "False"], proc.stderr[-2000:]
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hparams_search=depth_gap"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("DenetdmOptunaSweeper") and cfg.hydra.sweeper.records_failures


@pytest.mark.parametrize(
    "overrides,study",
    [
        (["dataset=ccifar10"], "seeds-ccifar10-2026-12-04_09-00-00"),
        (["experiment=paper_ccifar10"], "seeds-ccifar10-paper_ccifar10-2026-12-04_09-00-00"),
    ],
)
def test_the_seeds_search_says_which_setting_it_runs(overrides, study):
    from denetdm.sweeps.jobs import default_study

    cfg = compose_cfg([*overrides, "hparams_search=seeds"])
    assert cfg.trial.study is None  # each job names it after its sweep (run.py)
    sweep_dir = "multirun/ccifar10/2026-12-04_09-00-00"
    assert default_study("seeds", cfg.dataset.name, cfg.experiment_name, sweep_dir) == study
    assert cfg.model.target.get("pretrained") is (True if "experiment=paper_ccifar10" in overrides else None)


def test_a_dataset_specialises_a_method_only_where_a_method_dataset_yaml_says_so(tmp_path):
    from denetdm.training.plan import plan

    def phase_node(overrides: list[str], phase: str) -> dict:
        p = plan(compose_cfg(["dataset=bffhq", f"dataset.root={tmp_path}", *overrides]), tmp_path)
        return p.phases[phase].hparams

    assert phase_node([], "stage2")["dist_weight"] == 0.0  # conf/method_dataset/denetdm_bffhq.yaml
    assert (phase_node(["method=denetdm_distill_only"], "stage2")["dist_weight"]) == 1.0  # its own ablation
    assert "dist_weight" not in phase_node(["method=erm"], "erm")  # a baseline on BFFHQ takes none of it


def test_wandb_groups_runs_as_a_table_cell_does_and_names_them_from_a_template(tmp_path):
    from denetdm.reporting.loggers import WandbLogger, run_group
    from denetdm.training.plan import plan

    def config(*overrides: str) -> dict:
        return plan(compose_cfg(["dataset=synthetic", *overrides]), tmp_path).config

    base = run_group(config())
    assert run_group(config("seed=1")) == base  # seeds of one setting: one group
    for other in ("dataset.conflict_pct=5", "model.shallow.depth=2", "target.epochs=3", "method=erm", "selection=last"):
        assert run_group(config(other)) != base, other  # another table cell or setting: another group
    assert run_group(config("method=erm")).startswith("erm synthetic sev4 1% d5 val #")
    logger = WandbLogger(str(tmp_path), config("seed=7"), study="depth_gap-synthetic", tags=["mine"])
    assert logger.kwargs["name"] == "denetdm-synthetic-1pct-d3-5-seed7"
    assert {"mine", "study-depth_gap-synthetic", "depths3-5", "conflict1pct"} <= set(logger.kwargs["tags"])
    with pytest.raises(ConfigError, match="logger.name.*not a template"):
        WandbLogger(str(tmp_path), config(), name="{method}-{nope}")
    own = config()  # own data: no severity, the data's own ratio
    own["dataset"] = {k: v for k, v in own["dataset"].items() if k != "severity"} | {"conflict_pct": None}
    assert run_group(own).startswith("denetdm synthetic natural ratio d3-5 val #")
    logger = WandbLogger(str(tmp_path), own)
    assert logger.kwargs["name"] == "denetdm-synthetic-natural-d3-5-seed0"
    assert "conflictnatural" in logger.kwargs["tags"] and not any(t.startswith("sev") for t in logger.kwargs["tags"])


@pytest.mark.parametrize(
    "overrides,warned",
    [
        ([], False),
        (["model.shallow.depth=5", "model.deep.depth=3"], True),
        (["model.shallow.depth=4", "model.deep.depth=4"], True),
        (["model.shallow.depth=4", "model.deep.depth=4", "+search.allow_equal=true"], False),  # the control
        (["method=erm", "model.shallow.depth=5", "model.deep.depth=3"], False),  # ERM trains neither expert
    ],
)
def test_a_shallow_expert_that_is_not_shallower_is_a_warning(overrides, warned, tmp_path, caplog):
    from denetdm.training.plan import plan

    plan(compose_cfg(["dataset=synthetic", *overrides]), tmp_path)
    assert ("is not below model.deep.depth" in caplog.text) == warned


def test_every_run_folder_has_one_layout():
    # outputs/[<kind>/]<dataset>/<date>_<time>: the presets, and the paths the docs show
    import re

    import yaml

    names = ("config", "debug/default", "collapse")
    dirs = [yaml.safe_load((CONF / f"{name}.yaml").read_text())["hydra"]["run"]["dir"] for name in names]
    assert all(d.endswith("${dataset.name}/${now:%Y-%m-%d_%H-%M-%S}") for d in dirs), dirs
    docs = (ROOT / "docs" / "python.md").read_text() + (ROOT / "README.md").read_text()
    shown = re.findall(r"outputs/[\w/<>-]*\d{4}-\d\d-\d\d[\w/:-]*", docs)
    assert shown and all(re.fullmatch(r"outputs/\w+/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", s) for s in shown), shown
