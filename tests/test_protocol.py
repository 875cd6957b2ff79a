"""Protocol facts of docs/protocols.md §3: palette, noise table, exact counts, split composition, seeding."""

import pytest
import torch

from denetdm.data.bias import assign_bias, check_conflict_pct, holdout
from denetdm.data.palette import COLOR_STD, COLORS, colorize
from denetdm.data.synthetic import SyntheticShapes
from denetdm.errors import ConfigError
from denetdm.seeding import generator

# Per-class sizes of the MNIST training and test sets (facts, so these tests need no download).
MNIST_TRAIN = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def labels_with_counts(counts: list[int]) -> torch.Tensor:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]


def test_palette_and_noise_table():
    assert COLORS.shape == (10, 3)
    assert COLORS[0].tolist() == pytest.approx([0.983682, 0.312519, 0.168575])
    assert COLORS[6].tolist() == pytest.approx([0.024616, 0.235650, 0.758666])
    assert COLORS[9].tolist() == pytest.approx([0.833658, 0.202409, 0.266943])
    assert COLOR_STD == {1: 0.05, 2: 0.02, 3: 0.01, 4: 0.005, 5: 0.002}


@pytest.mark.parametrize("pct,expected", [(0.5, 300), (1, 598), (2, 1199), (5, 3000)])
def test_exact_conflicting_counts_on_mnist_sizes(pct, expected):
    y = labels_with_counts(MNIST_TRAIN)
    b = assign_bias(y, 1 - pct / 100, 10, generator(0, "t"))
    assert int((b != y).sum()) == expected
    # conflicting samples of a class are spread evenly over the 9 other colours
    for c in range(10):
        other = b[(y == c) & (b != c)]
        counts = torch.bincount(other, minlength=10)
        assert counts[c] == 0
        assert counts.max() - counts[counts > 0].min() <= 1 or len(other) < 9


def test_test_split_is_ten_percent_aligned():
    y = labels_with_counts(MNIST_TEST)
    b = assign_bias(y, 0.1, 10, generator(0, "test"))
    assert int((b == y).sum()) == 1000 and int((b != y).sum()) == 9000
    for c in range(10):  # every (class, colour) cell is populated, roughly uniformly
        cells = torch.bincount(b[y == c], minlength=10)
        assert cells.min() >= (y == c).sum() // 10 - 1


def test_assignment_is_seeded():
    y = labels_with_counts(MNIST_TEST)
    a = assign_bias(y, 0.99, 10, generator(0, "x"))
    assert torch.equal(a, assign_bias(y, 0.99, 10, generator(0, "x")))
    assert not torch.equal(a, assign_bias(y, 0.99, 10, generator(1, "x")))


@pytest.mark.parametrize("bad", [0, 100, 150, -1, "abc"])
def test_conflict_pct_range(bad):
    with pytest.raises(ConfigError, match="conflict_pct"):
        check_conflict_pct(bad)


def test_holdout_is_disjoint_and_complete():
    keep, held = holdout(100, 10, generator(0, "h"))
    assert len(held) == 10 and len(keep) == 90
    assert sorted(torch.cat([keep, held]).tolist()) == list(range(100))


def test_colorize_keeps_background_black_and_uses_the_bias_colour():
    gray = torch.zeros(20, 28, 28, dtype=torch.uint8)
    gray[:, 10:18, 10:18] = 255
    bias = torch.arange(20) % 10
    rgb = colorize(gray, bias, 0.005, generator(0, "c"))
    assert rgb.shape == (20, 3, 28, 28) and rgb.dtype == torch.uint8
    assert rgb[:, :, :10, :].sum() == 0  # background stays black
    fg = rgb[:, :, 14, 14].double() / 255
    assert torch.allclose(fg, COLORS[bias], atol=0.03)  # severity 4: noise std 0.005
    noisy = colorize(gray, bias, 0.05, generator(0, "c"))[:, :, 14, 14].double() / 255
    assert (noisy - COLORS[bias]).abs().max() > (fg - COLORS[bias]).abs().max()


def _synthetic(seed: int, **kw):
    args = dict(
        name="synthetic", severity=4, conflict_pct=5, val_size=100, seed=seed, cache_dir="/nonexistent-never-written"
    )
    args.update(kw)
    return SyntheticShapes(train_size=600, test_size=300, **args)


def test_synthetic_same_seed_same_bytes_and_protocol_counts(tmp_path):
    a = _synthetic(0, cache_dir=str(tmp_path / "a")).load()
    b = _synthetic(0, cache_dir=str(tmp_path / "b")).load()
    c = _synthetic(1, cache_dir=str(tmp_path / "c")).load()
    for split in ("train", "val", "test"):
        sa, sb = getattr(a, split), getattr(b, split)
        assert torch.equal(sa.x, sb.x) and torch.equal(sa.y, sb.y) and torch.equal(sa.b, sb.b)
    assert not torch.equal(a.train.x, c.train.x)
    assert len(a.train) == 500 and len(a.val) == 100 and len(a.test) == 300
    assert int((a.train.b != a.train.y).sum()) == 25  # 5 % of 500, exactly
    assert int((a.test.b == a.test.y).sum()) == 30  # 10 % aligned
    assert a.train.x.shape[1:] == (3, 28, 28) and a.train.x.dtype == torch.uint8


def test_severity_must_exist():
    with pytest.raises(ConfigError, match="severity"):
        _synthetic(0, severity=9)


@pytest.mark.parametrize("pct,expected", [(0.5, 250), (1, 500), (2, 1000), (5, 2500)])
def test_exact_conflicting_counts_on_cifar10_sizes(pct, expected):
    y = labels_with_counts([5000] * 10)  # the 50,000 CIFAR-10 training images
    assert int((assign_bias(y, 1 - pct / 100, 10, generator(0, "t")) != y).sum()) == expected
    test = labels_with_counts([1000] * 10)
    assert int((assign_bias(test, 0.1, 10, generator(0, "test")) == test).sum()) == 1000
