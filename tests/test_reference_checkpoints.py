"""`stage=eval` on checkpoints that the reference code saved (denetdm/methods/denetdm_reference.py): the same numbers as
its own evaluation, from fixtures its code made (tests/reference/reference_checkpoints.py)."""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from reference.reference_checkpoints import SHAPES, draw, inputs

from denetdm.errors import CheckpointError, ConfigError
from denetdm.methods.denetdm_reference import layout
from denetdm.training.pipeline import from_reference, train

from conftest import CONF, ROOT, compose_cfg, read_results

FIXTURES = ROOT / "tests" / "fixtures" / "reference_checkpoints"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
HEADS = {"stage1": {"shallow": "debias", "deep": "bias", "poe": "poe"}, "stage2": {"target": "debias"}}
DATA = Path(os.environ.get("DENETDM_DATA", "data"))


def _data(family: str) -> SimpleNamespace:
    """What a phase is built from, without the data itself."""
    classes = 2 if family == "bffhq" else 10
    return SimpleNamespace(name=family, input_shape=SHAPES[family], num_classes=classes, num_biases=classes, train=None)


def _method() -> dict:
    import yaml

    from denetdm.training import phases as ph

    return ph.resolve(yaml.safe_load((CONF / "method" / "denetdm.yaml").read_text()))  # as a run's plan has it


@pytest.mark.parametrize("name", sorted(EXPECTED["layouts"]))
def test_each_layout_of_the_reference_gives_its_logits(name):
    from denetdm.training import phases as ph
    from denetdm.training.pipeline import context

    family = name.split("_")[0]
    want = EXPECTED["layouts"][name]
    ckpt = from_reference(draw(want["shapes"]), _data(family), _method())
    assert ckpt["kind"] == name.split("_")[1]
    method = ph.rebuild(ckpt["meta"]["method"], ckpt["kind"], context(_data(family), ckpt["meta"]["model"]))
    method.load_state_dict(ckpt["method"])
    with torch.no_grad():
        got = method.eval().predict(inputs(family))
    for ours, theirs in HEADS[ckpt["kind"]].items():
        assert torch.allclose(got[ours], torch.tensor(want["logits"][theirs]), atol=1e-4), (name, ours)


def test_the_layout_and_depths_are_read_from_the_file():
    shapes = EXPECTED["layouts"]["cmnist_stage1"]["shapes"]
    family, kind, specs = layout(draw(shapes))
    assert (family, kind) == ("cmnist", "stage1")
    assert (specs["shallow"]["depth"], specs["deep"]["depth"]) == (3, 5)
    resnet20 = {"name": "resnet_cifar", "depth": 20}
    assert layout(draw(EXPECTED["layouts"]["ccifar10_stage2"]["shapes"]))[2]["deep"] == resnet20
    with pytest.raises(CheckpointError, match="no layout known here"):
        layout({"bias_branch.weird.weight": torch.zeros(3)})
    with pytest.raises(ConfigError, match="experiment=paper_cmnist"):
        from_reference(draw(shapes), _data("ccifar10"), _method())


@pytest.mark.skipif(not (DATA / "MNIST" / "raw").is_dir(), reason="needs MNIST in $DENETDM_DATA/MNIST/raw")
def test_a_reference_stage2_file_evaluates_to_the_references_own_numbers(tmp_path):
    ckpt = FIXTURES / "cmnist_stage2.th"
    train(compose_cfg(["experiment=paper_cmnist", "stage=eval", f"stage.ckpt={ckpt}", "logger=none"]), tmp_path)
    results = read_results(tmp_path)
    for metric, value in EXPECTED["cmnist_stage2_eval"].items():  # its evaluate(debias_weight=1, bias_weight=0)
        assert results[f"test/{metric}"] == pytest.approx(value, abs=1e-6), metric
