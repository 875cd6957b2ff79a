"""Colored MNIST on the real MNIST files (skipped with a reason when $DENETDM_DATA lacks them)."""

import logging

import pytest
import torch

from denetdm.data.bias import assign_bias
from denetdm.data.cmnist import ColoredMNIST, load_grayscale
from denetdm.errors import DataError
from denetdm.seeding import generator

from conftest import COMMON, MNIST_ROOT, needs_mnist, read_results, run_cli

pytestmark = [pytest.mark.real_data, needs_mnist]


@pytest.mark.slow
@pytest.mark.parametrize("pct,expected", [(0.5, 300), (1, 598), (2, 1199), (5, 3000)])
def test_exact_counts_on_the_full_training_set(pct, expected):
    _, y, _, _ = load_grayscale("mnist", MNIST_ROOT, download=False)
    assert len(y) == 60000
    b = assign_bias(y, 1 - pct / 100, 10, generator(0, "train-bias"))
    assert int((b != y).sum()) == expected


@pytest.fixture(scope="module")
def cmnist(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cmnist-cache")
    kw = dict(root=MNIST_ROOT, name="cmnist", download=False, severity=4, conflict_pct=1, val_size=1000, seed=0)
    return ColoredMNIST(cache_dir=str(cache), **kw), kw, cache


@pytest.mark.slow
def test_splits_follow_the_protocol(cmnist):
    ds, _, _ = cmnist
    data = ds.load()
    assert (len(data.train), len(data.val), len(data.test)) == (59000, 1000, 10000)
    assert int((data.test.b == data.test.y).sum()) == 1000  # 10 % aligned test split
    assert abs(int((data.val.b == data.val.y).sum()) - 100) <= 5  # validation coloured like test
    conflicting = int((data.train.b != data.train.y).sum())
    assert abs(conflicting - 590) <= 5  # 1 % of the 59,000 images left after the hold-out
    assert data.train.x.shape[1:] == (3, 28, 28) and data.train.x.dtype == torch.uint8


@pytest.mark.slow
def test_cache_is_reused_and_damage_is_repaired(cmnist, caplog):
    ds, kw, cache = cmnist
    first = ds.load()
    files = list(cache.glob("cmnist-*.pt"))
    assert len(files) == 1
    caplog.set_level(logging.INFO, logger="denetdm.data.colored")
    again = ColoredMNIST(cache_dir=str(cache), **kw).load()  # served from the cache: nothing generated again
    assert torch.equal(again.train.x, first.train.x) and "generated" not in caplog.text
    with pytest.raises(DataError, match="not found"):  # the cache is keyed by the source's digest: it needs it
        ColoredMNIST(cache_dir=str(cache), **{**kw, "root": "/nonexistent"}).load()
    files[0].write_bytes(files[0].read_bytes()[: 1 << 20])  # truncate: a crash mid-write on another tool
    repaired = ds.load()
    assert "regenerating" in caplog.text
    assert torch.equal(repaired.test.x, first.test.x) and torch.equal(repaired.train.b, first.train.b)


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_differs(cmnist, tmp_path):
    ds, kw, _ = cmnist
    a = ds.load()
    b = ColoredMNIST(cache_dir=str(tmp_path / "fresh"), **kw).load()
    c = ColoredMNIST(cache_dir=str(tmp_path / "seed1"), **{**kw, "seed": 1}).load()
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.b, b.test.b)
    assert not torch.equal(a.train.b, c.train.b)


@pytest.mark.slow
def test_short_cmnist_run_debiases(tmp_path):
    proc = run_cli([*COMMON, "dataset=cmnist", "experts.epochs=2", "target.epochs=1"], tmp_path / "r")
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = read_results(tmp_path / "r")
    assert r["stage1/shallow/test/acc_conflicting"] > r["stage1/deep/test/acc_conflicting"] + 0.2
    assert r["test/acc_unbiased"] > 0.5
