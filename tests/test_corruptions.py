"""Every corruption of both types: seeded, uint8 32x32x3 out, and it changes the image (except Original)."""

import numpy as np
import pytest

from denetdm.data.corruptions import TYPES, corrupt

CASES = [(kind, fn) for kind, fns in TYPES.items() for fn in fns]


def _image() -> np.ndarray:
    rng = np.random.default_rng(3)
    base = rng.integers(40, 215, (8, 8, 3)).astype(np.uint8)
    return np.kron(base, np.ones((4, 4, 1), np.uint8))  # blocks, so blurs have edges to act on


def test_both_types_have_ten_corruptions_in_protocol_order():
    assert [f.__name__ for f in TYPES[0]] == [
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
    ]
    assert [f.__name__ for f in TYPES[1]] == [
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


@pytest.mark.parametrize("kind,fn", CASES, ids=[f"type{k}-{f.__name__}" for k, f in CASES])
@pytest.mark.parametrize("level", [2, 5])
def test_corruption_is_seeded_shaped_and_visible(kind, fn, level):
    img = _image()
    a = corrupt(img, fn, level, np.random.RandomState(0))
    b = corrupt(img, fn, level, np.random.RandomState(0))
    assert a.dtype == np.uint8 and a.shape == (32, 32, 3)
    assert np.array_equal(a, b)
    if fn.__name__ == "original":
        assert np.array_equal(a, img)
    else:
        assert np.abs(a.astype(int) - img).mean() > 0.5


def test_higher_levels_corrupt_more():
    img = _image()
    for fn in (TYPES[1][0], TYPES[1][4], TYPES[0][4]):  # gaussian noise, gaussian blur, contrast
        diffs = [np.abs(corrupt(img, fn, lv, np.random.RandomState(0)).astype(int) - img).mean() for lv in (1, 5)]
        assert diffs[1] > diffs[0], fn.__name__
