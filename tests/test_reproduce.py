"""`make gpu-reproduce` (tests/reproduce.py): its steps run at a tiny size and come back as store records."""

import json
import tarfile
from collections import Counter

import pytest
import reproduce
from test_image_datasets import cifar_tree  # noqa: F401 (a fixture)


def test_unknown_step_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="--steps takes names among cmnist_ablations, ccifar10_denetdm"):
        reproduce.main(["--out", str(tmp_path), "--steps", "ccifar10_denetdm,nope"])


def test_a_spent_budget_runs_nothing_and_says_so(tmp_path, capsys):
    assert reproduce.main(["--out", str(tmp_path), "--budget", "0", "--steps", "ccifar10_erm"]) == 1
    assert "not finished: ccifar10_erm" in capsys.readouterr().out and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_tiny_steps_come_back_as_records(cifar_tree, tmp_path):  # noqa: F811
    pack = tmp_path / "records.tar.gz"
    args = [
        "--out",
        str(tmp_path / "o"),
        "--tiny",
        "--cifar-source",
        str(cifar_tree),
        "--pack",
        str(pack),
        "--steps",
        "ccifar10_denetdm",
    ]
    assert reproduce.main(args) == 0
    with tarfile.open(pack) as tar:
        records = {m.name: json.load(tar.extractfile(m)) for m in tar.getmembers() if m.isfile()}
    stores = Counter(name.split("/")[1] for name in records)
    assert stores == {"ccifar10_table1": 3}
    cifar = [r for n, r in records.items() if "ccifar10" in n]
    assert sorted(r["seed"] for r in cifar) == [0, 1, 2]
    # no ImageNet weights here: the target trains from scratch, and the record says so
    assert all(r["config"]["model"]["target"]["pretrained"] is False for r in cifar)
