"""Bad input, in process: every documented key with a wrong value or type is one clear error before training.

These call the pipeline through Hydra's compose API (fast); tests/test_cli.py keeps a few of them on the real
command line, where the same errors become one `error:` line.
"""

import pytest

from denetdm.cli import check_group_choices
from denetdm.errors import CheckpointError, ConfigError, DataError, DenetdmError
from denetdm.pipeline import train

from conftest import COMMON, TINY, compose_cfg


def _error(overrides: list[str], tmp_path, kind: type[DenetdmError] = DenetdmError) -> str:
    cfg = compose_cfg([*TINY, *overrides])
    with pytest.raises(kind) as info:
        train(cfg, tmp_path / "run")
    message = str(info.value)
    assert "\n" not in message, message  # one line
    assert not (tmp_path / "run" / "checkpoints").exists(), "the error must come before training"
    return message


@pytest.mark.parametrize(
    "override,words",
    [
        ("seed=abc", ["seed", "abc"]),
        ("selection=best", ["selection", "best"]),
        ("device=tpu", ["device", "tpu"]),
        ("amp=maybe", ["amp"]),
        ("resume=2", ["resume"]),
        ("threads=0", ["threads"]),
        ("progress=sometimes", ["progress"]),
        ("stage1.epochs=abc", ["stage1.epochs", "abc"]),
        ("stage2.epochs=0", ["stage2.epochs"]),
        ("stage1.batch_size=-4", ["stage1.batch_size"]),
        ("stage1.select=shallow", ["stage1.select"]),
        ("stage1.lr=-1", ["stage1.lr"]),
        ("stage2.lr=abc", ["stage2.lr", "abc"]),
        ("stage2.weight_decay=-0.1", ["stage2.weight_decay"]),
        ("stage2.temperature=0", ["stage2.temperature"]),
        ("stage2.dist_weight=abc", ["stage2.dist_weight"]),
        ("optimizer.betas=[0.9,2.0]", ["optimizer", "beta"]),
        ("optimizer=sgd", ["optimizer"]),  # with a negative momentum below
        ("dataset.conflict_pct=150", ["conflict_pct", "150"]),
        ("dataset.val_size=0", ["val_size"]),
        ("dataset.subset=-5", ["dataset.subset"]),
        ("dataset.eval_subset=abc", ["dataset.eval_subset"]),
        ("dataset.seed=1.5", ["dataset.seed"]),
        ("model.deep.depth=1", ["depth"]),
        ("model.shallow.width=0", ["width"]),
        ("stage=stage2", ["stage.stage1_ckpt"]),
        ("stage=eval", ["stage.ckpt"]),
    ],
)
def test_bad_value_is_one_clear_error_before_training(override, words, tmp_path):
    extra = ["optimizer.momentum=-1"] if override == "optimizer=sgd" else []
    message = _error([override, *extra], tmp_path)
    for w in words:
        assert w in message, message


def test_unknown_group_choice_lists_the_options():
    assert "synthetic" in check_group_choices(["dataset=foo"]) and "cmnist" in check_group_choices(["dataset=foo"])
    assert "1, 2, 3, 4" in check_group_choices(["severity=9"])
    assert check_group_choices(["severity=4", "dataset=cmnist"]) is None


def test_missing_mnist_offline_names_the_folder(tmp_path, monkeypatch):
    empty = tmp_path / "nodata"
    empty.mkdir()
    monkeypatch.setenv("DENETDM_DATA", str(empty))
    cfg = compose_cfg([*COMMON, "dataset=cmnist", "dataset.download=false"])
    with pytest.raises(DataError, match=str(empty / "MNIST" / "raw")):
        train(cfg, tmp_path / "run")


def test_damaged_or_missing_checkpoint_is_reported(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert "damaged" in _error(["stage=eval", f"stage.ckpt={bad}"], tmp_path, CheckpointError)
    assert "does not exist" in _error(["stage=eval", f"stage.ckpt={tmp_path}/none.pt"], tmp_path, CheckpointError)


def test_resume_with_another_config_is_refused_and_names_the_key(tmp_path):
    run_dir = tmp_path / "r"
    train(compose_cfg([*TINY, "stage=stage1", "stage1.epochs=1"]), run_dir)
    (run_dir / "done").unlink()
    with pytest.raises(CheckpointError, match="stage1.lr"):
        train(compose_cfg([*TINY, "stage=stage1", "stage1.epochs=1", "stage1.lr=0.01"]), run_dir)
    # a key that cannot change the numbers is no reason to refuse
    train(compose_cfg([*TINY, "stage=stage1", "stage1.epochs=1", "threads=1"]), run_dir)


def test_a_nan_learning_rate_is_refused_before_training(tmp_path):
    # torch's Adam accepts lr=nan and trains into a non-finite loss: refuse it up front
    assert "stage1.lr" in _error(["stage1.lr=nan"], tmp_path, ConfigError)
