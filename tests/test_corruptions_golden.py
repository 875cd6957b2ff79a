"""Our Corrupted CIFAR-10 corruptions against the reference's own outputs (tests/fixtures/reference_corruptions).

Seeded alike, 19 of the 20 corruptions give the reference's bytes at every level. Impulse noise cannot be
aligned (the reference draws it from scikit-image's unseeded generator), so per-image statistics are compared:
the fraction of values changed, mean, standard deviation and high-frequency energy.
"""

from pathlib import Path

import numpy as np
import pytest

from denetdm.data.corruptions import TYPES, corrupt

GOLDEN = np.load(Path(__file__).parent / "fixtures" / "reference_corruptions" / "golden.npz")
NAMES = [str(n) for n in GOLDEN["names"]]
FUNCTIONS = dict(zip(NAMES, TYPES[0] + TYPES[1]))  # the fixture's order is Type0 then Type1, like TYPES
UNALIGNED = {"Impulse Noise"}


def _ours(name: str, level: int) -> np.ndarray:
    k = NAMES.index(name)
    seeds = GOLDEN["seeds"][k, level - 1]
    return np.stack(
        [corrupt(img, FUNCTIONS[name], level, np.random.RandomState(int(s))) for img, s in zip(GOLDEN["images"], seeds)]
    )


def _reference(name: str, level: int) -> np.ndarray:
    return GOLDEN["outputs"][NAMES.index(name), level - 1]


def _stats(images: np.ndarray) -> np.ndarray:
    """Per image: fraction of values changed from the clean image, mean, std, high-frequency energy."""
    x = images.astype(np.float64)
    changed = (images != GOLDEN["images"]).mean(axis=(1, 2, 3))
    hf = (np.diff(x, axis=1) ** 2).mean(axis=(1, 2, 3)) + (np.diff(x, axis=2) ** 2).mean(axis=(1, 2, 3))
    return np.stack([changed, x.mean(axis=(1, 2, 3)), x.std(axis=(1, 2, 3)), np.sqrt(hf)], 1)


def test_fixture_order_matches_the_protocol_order():
    assert [f.__name__ for f in FUNCTIONS.values()] == [
        "snow",
        "frost",
        "fog",
        "brightness",
        "contrast",
        "spatter",
        "elastic",
        "jpeg",
        "pixelate",
        "saturate",
        "gaussian_noise",
        "shot_noise",
        "impulse_noise",
        "speckle_noise",
        "gaussian_blur",
        "defocus_blur",
        "glass_blur",
        "motion_blur",
        "zoom_blur",
        "original",
    ]


@pytest.mark.parametrize("level", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("name", [n for n in NAMES if n not in UNALIGNED])
def test_same_bytes_as_the_reference(name, level):
    ours, ref = _ours(name, level), _reference(name, level)
    diff = np.abs(ours.astype(int) - ref)
    assert diff.max() == 0, f"{name} level {level}: {int((diff > 0).sum())} values differ, by up to {diff.max()}"


@pytest.mark.parametrize("level", [1, 2, 3, 4, 5])
def test_impulse_noise_statistics_match_the_reference(level):
    # Tolerances: a few times the spread two unaligned draws of the same noise show on a 32x32x3 image
    # (the changed fraction is a binomial proportion: std ~ sqrt(p / 3072) ~ 0.5 point at 7 %).
    ours, ref = _stats(_ours("Impulse Noise", level)), _stats(_reference("Impulse Noise", level))
    p = (0.01, 0.02, 0.03, 0.05, 0.07)[level - 1]
    assert np.abs(ours[:, 0] - ref[:, 0]).max() < 4 * np.sqrt(p / 3072) + 1e-3
    assert np.abs(ours[:, 1] - ref[:, 1]).max() < 6.0  # mean, of 0..255
    assert np.abs(ours[:, 2] - ref[:, 2]).max() < 6.0  # standard deviation
    assert np.abs(ours[:, 3] / ref[:, 3] - 1).max() < 0.15  # high-frequency energy, relative
