"""The 20 CIFAR-10-C corruptions at CIFAR scale (docs/protocols.md §4), reproducing the reference protocol's
arithmetic (kadarsh22/DeNetDM and alinlab/LfF, data/corrupted_cifar10_protocol.py) with numpy, scipy, OpenCV and
scikit-image only. ImageMagick's motion blur, which the reference calls through Wand, is re-implemented here
(`_magick_motion_blur`).

Each corruption maps a uint8 (H, W, 3) image, a level 1..5 and a legacy `numpy.random.RandomState` to an
array the way the reference does, and `corrupt` stores it the way the reference's make_dataset.py does
(`astype(np.uint8)`: truncation, not rounding). Every random draw is the reference's call, in the reference's
order, on that generator: seeded alike, ours and the reference's give the same bytes
(tests/test_corruptions_golden.py). The reference's quirks are kept on purpose and marked `quirk:`.

Frost textures are the frost photographs shipped as package data by `imagecorruptions-imaug` (the same files
as the reference's data/resource/frost*), which `make install` unpacks into FROST_DIR.
"""

import io
import math
from functools import cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from scipy.ndimage import map_coordinates
from scipy.ndimage import zoom as nd_zoom
from skimage.color import hsv2rgb, rgb2hsv
from skimage.filters import gaussian

from denetdm.errors import DataError

FROST_DIR = Path(__file__).parent / "frost"  # unpacked by `make install` (Makefile: FROST)

Rng = np.random.RandomState

# ---- helpers -------------------------------------------------------------------------------------------


def _clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom into the centre by `factor` (linear) and crop back to the original size."""
    h, w = x.shape[:2]
    ch, cw = int(np.ceil(h / factor)), int(np.ceil(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    out = nd_zoom(x[top : top + ch, left : left + cw], (factor, factor) + (1,) * (x.ndim - 2), order=1)
    t, lft = (out.shape[0] - h) // 2, (out.shape[1] - w) // 2
    return out[t : t + h, lft : lft + w]


def _motion_taps(radius: float, sigma: float, angle: float) -> tuple[list[float], list[tuple[int, int]]]:
    """ImageMagick 6's MotionBlurImage kernel: 2*ceil(radius)+1 one-sided Gaussian taps at whole-pixel offsets."""
    width = int(2 * math.ceil(radius) + 1)  # GetOptimalKernelWidth1D for radius > 0
    s = max(abs(sigma), 1e-12)
    raw = [math.exp(-(i * i) / (2.0 * s * s)) / (math.sqrt(2 * math.pi) * s) for i in range(width)]
    total = 0.0
    for r in raw:  # summed in ImageMagick's order
        total += r
    rad = math.pi * angle / 180.0
    px, py = width * math.sin(rad), width * math.cos(rad)
    norm = math.hypot(px, py)
    offsets = [(math.ceil(i * py / norm - 0.5), math.ceil(i * px / norm - 0.5)) for i in range(width)]
    return [r / total for r in raw], offsets


def _magick_motion_blur(img: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """What Wand's MagickMotionBlurImage does to an 8-bit image on ImageMagick 6 Q16: taps at (x + dx, y + dy),
    edge pixels repeated, the sum rounded to a 16-bit quantum, which the PNG coder truncates back to 8 bits
    (checked against ImageMagick 6.9.11 Q16 through Wand: tests/fixtures/reference_corruptions)."""
    weights, offsets = _motion_taps(radius, sigma, angle)
    h, w = img.shape[:2]
    q = img.astype(np.float64) * 257.0  # ScaleCharToQuantum
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    acc = np.zeros(q.shape, np.float64)
    for k, (dx, dy) in zip(weights, offsets):
        acc += k * q[np.clip(rows + dy, 0, h - 1), np.clip(cols + dx, 0, w - 1)]
    quantum = np.floor(np.clip(acc, 0.0, 65535.0) + 0.5)  # ClampToQuantum
    return np.floor(quantum / 257.0).astype(np.uint8)


def _reflect101(i: np.ndarray, n: int) -> np.ndarray:
    """OpenCV's BORDER_REFLECT_101 index (gfedcb|abcdefgh|gfedcba) for indices within one image of the edge."""
    i = np.where(i < 0, -i, i)
    return np.where(i >= n, 2 * (n - 1) - i, i)


def _warp_affine(image: np.ndarray, m: np.ndarray) -> np.ndarray:
    """cv2.warpAffine(image, m, (w, h), INTER_LINEAR, BORDER_REFLECT_101) on float32 as OpenCV 4 (the reference's)
    computes it: the inverse map in 10-bit fixed point, source positions in 1/32 pixel, float32 bilinear weights
    summed in order. OpenCV 5 interpolates differently (up to ~7/255 apart), so it is not called."""
    h, w = image.shape[:2]
    a, b, c, d, e, f = (float(v) for v in m.reshape(-1))
    det = a * e - b * d
    det = 1.0 / det if det != 0 else 0.0
    a, b, d, e = e * det, b * -det, d * -det, a * det
    c, f = -a * c - b * f, -d * c - e * f
    xs, ys = np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)
    adelta, bdelta = np.rint(a * xs * 1024).astype(np.int64), np.rint(d * xs * 1024).astype(np.int64)
    x0 = np.rint((b * ys + c) * 1024).astype(np.int64) + 16
    y0 = np.rint((e * ys + f) * 1024).astype(np.int64) + 16
    X = (x0[:, None] + adelta[None, :]) >> 5
    Y = (y0[:, None] + bdelta[None, :]) >> 5
    sx, sy, fx, fy = X >> 5, Y >> 5, (X & 31), (Y & 31)
    vx, vy = fx.astype(np.float32) / np.float32(32), fy.astype(np.float32) / np.float32(32)
    one = np.float32(1)
    w00, w01, w10, w11 = (one - vy) * (one - vx), (one - vy) * vx, vy * (one - vx), vy * vx
    r0, r1 = _reflect101(sy, h), _reflect101(sy + 1, h)
    c0, c1 = _reflect101(sx, w), _reflect101(sx + 1, w)
    ex = [x[..., None] for x in (w00, w01, w10, w11)]
    out = image[r0, c0] * ex[0] + image[r0, c1] * ex[1]  # summed in this order, in float32, as OpenCV 4 does
    out += image[r1, c0] * ex[2]
    out += image[r1, c1] * ex[3]
    return out


def _plasma(size: int, decay: float, rng: Rng) -> np.ndarray:
    """The reference's diamond-square plasma fractal on a size x size grid, scaled to [0, 1].

    quirk: the noise added to each new point is wibble * uniform(-wibble, wibble), so its amplitude is
    wibble squared (each finer octave shrinks by decay squared), and a diamond point is the mean of the
    reference's particular neighbour sums (two square centres and two corners, with wrap-around)."""
    grid = np.empty((size, size), np.float64)
    grid[0, 0] = 0
    step, wibble = size, 100.0

    def noisy_mean(total: np.ndarray) -> np.ndarray:
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        corners = grid[0:size:step, 0:size:step]
        squares = corners + np.roll(corners, -1, axis=0)
        squares += np.roll(squares, -1, axis=1)
        grid[half:size:step, half:size:step] = noisy_mean(squares)
        centres, corners = grid[half:size:step, half:size:step], grid[0:size:step, 0:size:step]
        left = (centres + np.roll(centres, 1, axis=0)) + (corners + np.roll(corners, -1, axis=1))
        grid[0:size:step, half:size:step] = noisy_mean(left)
        top = (centres + np.roll(centres, 1, axis=1)) + (corners + np.roll(corners, -1, axis=0))
        grid[half:size:step, 0:size:step] = noisy_mean(top)
        step //= 2
        wibble /= decay
    grid -= grid.min()
    return grid / grid.max()


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """The reference's anti-aliased disk kernel for defocus blur (at least 17 x 17)."""
    r = np.arange(-8, 8 + 1) if radius <= 8 else np.arange(-radius, radius + 1)
    xx, yy = np.meshgrid(r, r)
    disk = np.array((xx**2 + yy**2) <= radius**2, dtype=np.float32)
    disk /= np.sum(disk)
    return cv2.GaussianBlur(disk, ksize=(3, 3) if radius <= 8 else (5, 5), sigmaX=alias_blur)


@cache
def _frost_textures() -> tuple[np.ndarray, ...]:
    """The frost photographs (BGR, as cv2 reads them) shrunk to a fifth, as the reference does."""
    if not (folder := FROST_DIR).is_dir():
        raise DataError(
            f"the frost corruption needs the frost photographs in {folder}; run `make install` "
            "(it unpacks them from the imagecorruptions-imaug wheel)"
        )
    names = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg"]
    out = []
    for name in names:
        img = cv2.imread(str(folder / name))
        if img is None:
            raise DataError(f"cannot read the frost photograph {folder / name}; remove {folder} and run `make install`")
        out.append(cv2.resize(img, (0, 0), fx=0.2, fy=0.2))
    return tuple(out)


# ---- the corruptions: img is uint8 (H, W, 3); each returns what the reference's function returns --------------


def gaussian_noise(img: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    x = img / 255.0
    return np.clip(x + rng.normal(size=x.shape, scale=(0.04, 0.06, 0.08, 0.09, 0.10)[level - 1]), 0, 1) * 255


def shot_noise(img: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    rate = (500, 250, 100, 75, 50)[level - 1]
    return np.clip(rng.poisson(img / 255.0 * rate) / rate, 0, 1) * 255


def impulse_noise(img: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    """scikit-image's random_noise(mode="s&p"): each value flipped with probability `amount`, to 1 or 0 evenly.
    (The reference calls it unseeded, so its draws cannot be aligned with ours: compared by statistics.)"""
    x = img / 255.0
    flipped = rng.random_sample(x.shape) <= (0.01, 0.02, 0.03, 0.05, 0.07)[level - 1]
    salted = rng.random_sample(x.shape) <= 0.5
    out = x.copy()
    out[flipped & salted] = 1.0
    out[flipped & ~salted] = 0.0
    return np.clip(out, 0, 1) * 255


def speckle_noise(img: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    x = img / 255.0
    noise = rng.normal(size=x.shape, scale=(0.06, 0.1, 0.12, 0.16, 0.2)[level - 1])
    return np.clip(x + x * noise, 0, 1) * 255


def gaussian_blur(img: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    x = gaussian(img / 255.0, sigma=(0.4, 0.6, 0.7, 0.8, 1)[level - 1], channel_axis=-1)
    return np.clip(x, 0, 1) * 255


def glass_blur(img: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    sigma, delta, iterations = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))[level - 1]
    x = np.uint8(gaussian(img / 255.0, sigma=sigma, channel_axis=-1) * 255)
    h, w = x.shape[:2]
    for _ in range(iterations):
        pixels = [(i, j) for i in range(h - delta, delta, -1) for j in range(w - delta, delta, -1)]
        shifts = rng.randint(-delta, delta, size=(len(pixels), 2))  # the same draws as one randint(size=2) a pixel
        for (i, j), (dx, dy) in zip(pixels, shifts):
            # quirk: the reference's tuple "swap" of two numpy views copies the neighbour in and leaves it as is
            x[i, j] = x[i + dy, j + dx]
    return np.clip(gaussian(x / 255.0, sigma=sigma, channel_axis=-1), 0, 1) * 255


def defocus_blur(img: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    radius, alias = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))[level - 1]
    x, kernel = img / 255.0, _disk(radius, alias)
    channels = np.array([cv2.filter2D(x[:, :, d], -1, kernel) for d in range(3)]).transpose((1, 2, 0))
    return np.clip(channels, 0, 1) * 255


def motion_blur(img: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    radius, sigma = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))[level - 1]
    return _magick_motion_blur(img, radius, sigma, rng.uniform(-45, 45))


def zoom_blur(img: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    zooms = np.arange(1, (1.06, 1.11, 1.16, 1.21, 1.26)[level - 1], 0.01)
    x = (img / 255.0).astype(np.float32)
    out = np.zeros_like(x)
    for z in zooms:
        out += _clipped_zoom(x, z)
    return np.clip((x + out) / (len(zooms) + 1), 0, 1) * 255


def snow(img: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    loc, scale, zoom, threshold, radius, sigma, blend = (
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    )[level - 1]
    x = np.array(img, dtype=np.float32) / 255.0
    h, w = x.shape[:2]
    flakes = _clipped_zoom(rng.normal(size=(h, w), loc=loc, scale=scale)[..., None], zoom)
    flakes[flakes < threshold] = 0
    flakes8 = (np.clip(flakes.squeeze(), 0, 1) * 255).astype(np.uint8)  # the reference passes it through a PNG
    flakes = (_magick_motion_blur(flakes8, radius, sigma, rng.uniform(-135, -45)) / 255.0)[..., None]
    gray = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).reshape(h, w, 1)
    x = blend * x + (1 - blend) * np.maximum(x, gray * 1.5 + 0.5)
    return np.clip(x + flakes + np.rot90(flakes, k=2), 0, 1) * 255


def frost(img: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    w_img, w_frost = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))[level - 1]
    tex = _frost_textures()[rng.randint(5)]  # quirk: randint(5), so the sixth photograph is never used
    h, w = img.shape[:2]
    top, left = rng.randint(0, tex.shape[0] - h), rng.randint(0, tex.shape[1] - w)
    crop = tex[top : top + h, left : left + w][..., [2, 1, 0]]  # BGR -> RGB
    return np.clip(w_img * np.asarray(img) + w_frost * crop, 0, 255)


def fog(img: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    strength, decay = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))[level - 1]
    x = img / 255.0
    h, w = x.shape[:2]
    size = max(32, 1 << int(np.ceil(np.log2(max(h, w)))))  # the reference's 32 x 32 map for CIFAR
    peak = x.max()
    x += strength * _plasma(size, decay, rng)[:h, :w][..., None]
    return np.clip(x * peak / (peak + strength), 0, 1) * 255


def brightness(img: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    hsv = rgb2hsv(img / 255.0)
    hsv[:, :, 2] = np.clip(hsv[:, :, 2] + (0.05, 0.1, 0.15, 0.2, 0.3)[level - 1], 0, 1)
    return np.clip(hsv2rgb(hsv), 0, 1) * 255


def contrast(img: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    x = img / 255.0
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return np.clip((x - means) * (0.75, 0.5, 0.4, 0.3, 0.15)[level - 1] + means, 0, 1) * 255


def saturate(img: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    scale, shift = ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))[level - 1]
    hsv = rgb2hsv(img / 255.0)
    hsv[:, :, 1] = np.clip(hsv[:, :, 1] * scale + shift, 0, 1)
    return np.clip(hsv2rgb(hsv), 0, 1) * 255


def _water(x: np.ndarray, liquid: np.ndarray, intensity: float) -> np.ndarray:
    """Spatter at levels 1-3: pale turquoise droplets shaded along the liquid's edges (OpenCV, float32)."""
    liquid = (liquid * 255).astype(np.uint8)
    dist = cv2.distanceTransform(255 - cv2.Canny(liquid, 50, 150), cv2.DIST_L2, 5)
    _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
    dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
    emboss = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], np.float32)
    dist = cv2.blur(cv2.filter2D(dist, cv2.CV_8U, emboss), (3, 3)).astype(np.float32)
    m = cv2.cvtColor(liquid * dist, cv2.COLOR_GRAY2BGRA)
    m /= np.max(m, axis=(0, 1))
    m *= intensity
    ones = np.ones_like(m[..., :1])
    color = cv2.cvtColor(
        np.concatenate([175 / 255.0 * ones, 238 / 255.0 * ones, 238 / 255.0 * ones], 2), cv2.COLOR_BGR2BGRA
    )
    x = cv2.cvtColor(x, cv2.COLOR_BGR2BGRA)
    return cv2.cvtColor(np.clip(x + m * color, 0, 1), cv2.COLOR_BGRA2BGR) * 255


def spatter(img: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    loc, scale, sigma, threshold, intensity, mode = (
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    )[level - 1]
    x = np.array(img, dtype=np.float32) / 255.0
    liquid = gaussian(rng.normal(size=x.shape[:2], loc=loc, scale=scale), sigma=sigma)
    liquid[liquid < threshold] = 0
    if mode == 0:
        return _water(x, liquid, intensity)
    mud = gaussian(np.where(liquid > threshold, 1, 0).astype(np.float32), sigma=intensity)  # mud: dark brown
    mud[mud < 0.8] = 0
    ones = np.ones_like(x[..., :1])
    color = np.concatenate([63 / 255.0 * ones, 42 / 255.0 * ones, 20 / 255.0 * ones], axis=2)
    color *= mud[..., None]
    x *= 1 - mud[..., None]
    return np.clip(x + color, 0, 1) * 255


def elastic(img: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    size = img.shape[0]
    c = ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))[level - 1]
    alpha, sigma, affine = (size * v for v in c)  # the reference's IMSIZE * fraction
    image = np.array(img, dtype=np.float32) / 255.0
    shape = image.shape
    centre, side = np.float32(shape[:2]) // 2, min(shape[:2]) // 3
    src = np.float32([centre + side, [centre[0] + side, centre[1] - side], centre - side])
    dst = src + rng.uniform(-affine, affine, size=src.shape).astype(np.float32)
    image = _warp_affine(image, cv2.getAffineTransform(src, dst))
    dx = (gaussian(rng.uniform(-1, 1, size=shape[:2]), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    dy = (gaussian(rng.uniform(-1, 1, size=shape[:2]), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    x, y, z = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    coords = (np.reshape(y + dy[..., None], (-1, 1)), np.reshape(x + dx[..., None], (-1, 1)), np.reshape(z, (-1, 1)))
    return np.clip(map_coordinates(image, coords, order=1, mode="reflect").reshape(shape), 0, 1) * 255


def jpeg(img: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=(80, 65, 58, 50, 40)[level - 1])
    return np.asarray(Image.open(buf))


def pixelate(img: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    h, w = img.shape[:2]
    c = (0.95, 0.9, 0.85, 0.75, 0.65)[level - 1]
    return np.asarray(Image.fromarray(img).resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), Image.BOX))


def original(img: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    return img


# bias index -> corruption, for the two protocols of LfF
TYPES = {
    0: (snow, frost, fog, brightness, contrast, spatter, elastic, jpeg, pixelate, saturate),
    1: (
        gaussian_noise,
        shot_noise,
        impulse_noise,
        speckle_noise,
        gaussian_blur,
        defocus_blur,
        glass_blur,
        motion_blur,
        zoom_blur,
        original,
    ),
}


def corrupt(img: np.ndarray, fn, level: int, rng: Rng) -> np.ndarray:
    """Apply one corruption to a uint8 (H, W, 3) image and store it as the reference does (truncated to uint8;
    a NaN, which the reference's spatter can make, becomes 0 as it does on x86)."""
    out = np.asarray(fn(np.ascontiguousarray(img, dtype=np.uint8), level, rng))
    if out.dtype != np.uint8:
        out = np.nan_to_num(out, nan=0.0, posinf=255.0, neginf=0.0)
    return out.astype(np.uint8)


def corrupt_chunk(args: tuple) -> np.ndarray:
    """Worker task: corrupt images[i] with corruption biases[i] of `kind`, drawing from one seeded stream."""
    images, biases, kind, level, seed = args
    cv2.setNumThreads(1)  # one process per core already
    rng = np.random.RandomState(seed % 2**32)
    return np.stack([corrupt(img, TYPES[kind][b], level, rng) for img, b in zip(images, biases)])
