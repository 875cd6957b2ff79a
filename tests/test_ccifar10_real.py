"""Corrupted CIFAR-10 generated from the real cifar10-jpeg.zip (skipped with a reason when it is absent)."""

import os
import time
from pathlib import Path

import pytest
import torch

from denetdm.data.ccifar10 import CorruptedCIFAR10

ZIP = Path(os.environ.get("DENETDM_DATA", "")) / "cifar10-jpeg.zip"

pytestmark = [
    pytest.mark.real_data,
    pytest.mark.slow,
    pytest.mark.skipif(not ZIP.is_file(), reason="cifar10-jpeg.zip not found: set DENETDM_DATA to a folder holding it"),
]


def test_full_generation_protocol_and_cache(tmp_path):
    kw = dict(name="ccifar10", root="", source=str(ZIP), severity=4, conflict_pct=1, val_size=1000, seed=0)
    t0 = time.time()
    data = CorruptedCIFAR10(cache_dir=str(tmp_path), **kw).load()
    generated = time.time() - t0
    assert (len(data.train), len(data.val), len(data.test)) == (49000, 1000, 10000)
    assert int((data.test.b == data.test.y).sum()) == 1000
    assert abs(int((data.train.b != data.train.y).sum()) - 490) <= 5
    assert data.train.x.shape[1:] == (3, 32, 32) and data.train.x.dtype == torch.uint8
    t0 = time.time()
    again = CorruptedCIFAR10(cache_dir=str(tmp_path), **kw).load()
    cached = time.time() - t0
    assert torch.equal(again.test.x, data.test.x)
    print(f"\nfull Corrupted CIFAR-10 generation {generated:.1f} s, cached load {cached:.2f} s")
