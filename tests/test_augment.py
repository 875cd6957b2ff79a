"""Batched augmentation and quick-run subsets."""

import pytest
import torch
import torch.nn.functional as F

from denetdm.data.augment import BatchAugment
from denetdm.data.splits import Split
from denetdm.errors import ConfigError


def test_crop_and_flip_are_crops_of_the_padded_batch():
    x = torch.rand(64, 3, 32, 32)
    out = BatchAugment(4, True)(x, torch.Generator().manual_seed(0))
    padded = F.pad(x, (4, 4, 4, 4))
    flipped = 0
    for i in range(64):
        crops = [padded[i, :, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
        plain = any(torch.equal(c, out[i]) for c in crops)
        mirrored = any(torch.equal(c.flip(2), out[i]) for c in crops)
        assert plain or mirrored
        flipped += mirrored and not plain
    assert 10 < flipped < 54  # about half are flipped


def test_same_generator_same_batch_and_fill_is_the_normalised_zero():
    x = torch.rand(8, 3, 16, 16)
    a = BatchAugment(4, True)(x, torch.Generator().manual_seed(1))
    b = BatchAugment(4, True)(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    fill = [-1.0, -2.0, -3.0]
    out = BatchAugment(8, False, fill)(torch.zeros(200, 3, 4, 4), torch.Generator().manual_seed(0))
    # 4x4 images in 8-pixel padding: most crops are pure border, which must be the fill value
    border = out[(out != 0).flatten(1).all(1)]
    assert len(border) > 0 and torch.equal(border[0, :, 0, 0], torch.tensor(fill))


def test_subset_keeps_the_conflicting_share():
    y = torch.arange(1000) % 10
    b = y.clone()
    b[:50] = (b[:50] + 1) % 10  # 5 % conflicting
    split = Split(torch.zeros(1000, 1), y, b)
    sub = split.subset(200, torch.Generator().manual_seed(0))
    assert len(sub) == 200 and int((sub.y != sub.b).sum()) == 10


def test_subset_out_of_range_is_a_config_error():
    from denetdm.data.splits import BiasedData

    split = Split(torch.zeros(10, 1), torch.zeros(10, dtype=torch.long), torch.zeros(10, dtype=torch.long))
    data = BiasedData("t", split, split, split, 1, 1)
    assert len(data.subsets(11, None, torch.Generator()).train) == 10  # more than there is: all of it
    with pytest.raises(ConfigError, match="dataset.subset"):
        data.subsets(-3, None, torch.Generator())
    with pytest.raises(ConfigError, match="dataset.eval_subset"):
        data.subsets(None, 0, torch.Generator())
