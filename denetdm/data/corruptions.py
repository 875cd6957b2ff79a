"""The 20 CIFAR-10-C corruptions at CIFAR scale (docs/protocols.md §4), with numpy, scipy, OpenCV and
scikit-image only (no ImageMagick). Each corruption maps a uint8 (H, W, 3) image, a level 1..5 and a numpy
Generator to a uint8 (H, W, 3) image; every random draw comes from that generator.

Frost textures are the frost photographs shipped as package data by `imagecorruptions-imaug` (read from its
folder in `_frost_textures`, without importing that package).
"""

import importlib.util
import io
from functools import cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, map_coordinates
from scipy.ndimage import zoom as nd_zoom
from skimage.color import hsv2rgb, rgb2hsv

from denetdm.errors import DataError

Rng = np.random.Generator

# ---- helpers -------------------------------------------------------------------------------------------


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of an (H, W) or (H, W, C) float image, channels kept apart."""
    s = (sigma, sigma, 0) if x.ndim == 3 else sigma
    return gaussian_filter(x, s, mode="nearest")


def _clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom into the centre by `factor` and crop back to the original size."""
    h, w = x.shape[:2]
    ch, cw = int(np.ceil(h / factor)), int(np.ceil(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[top : top + ch, left : left + cw]
    out = nd_zoom(crop, (factor, factor) + (1,) * (x.ndim - 2), order=1)
    t, lft = (out.shape[0] - h) // 2, (out.shape[1] - w) // 2
    return out[t : t + h, lft : lft + w]


def _motion_kernel(radius: int, sigma: float, angle: float) -> np.ndarray:
    """A one-sided line kernel of Gaussian weights along `angle` degrees (like a motion streak)."""
    size = 2 * radius + 1
    kernel = np.zeros((size, size), np.float32)
    dist = np.arange(radius + 1, dtype=np.float32)
    weights = np.exp(-(dist**2) / (2 * sigma**2))
    a = np.deg2rad(angle)
    for d, wgt in zip(dist, weights):
        x, y = radius + d * np.cos(a), radius - d * np.sin(a)
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        fx, fy = x - x0, y - y0
        for dx, dy, f in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
            if 0 <= x0 + dx < size and 0 <= y0 + dy < size:
                kernel[y0 + dy, x0 + dx] += wgt * f
    return kernel / kernel.sum()


def _motion(x: np.ndarray, radius: int, sigma: float, angle: float) -> np.ndarray:
    return cv2.filter2D(x.astype(np.float32), -1, _motion_kernel(radius, sigma, angle), borderType=cv2.BORDER_REFLECT)


def _plasma(size: int, decay: float, rng: Rng) -> np.ndarray:
    """Diamond-square plasma fractal on a size x size grid (size a power of two), scaled to [0, 1]."""
    grid = np.zeros((size, size), np.float64)
    step, scale = size, 100.0
    while step >= 2:
        half = step // 2
        # squares: centre of each square = mean of its corners + noise
        corners = grid[0:size:step, 0:size:step]
        mean = (
            corners + np.roll(corners, -1, 0) + np.roll(corners, -1, 1) + np.roll(np.roll(corners, -1, 0), -1, 1)
        ) / 4
        grid[half:size:step, half:size:step] = mean + rng.uniform(-scale, scale, mean.shape)
        # diamonds: edge midpoints = mean of their four neighbours + noise
        for r0, c0 in ((0, half), (half, 0)):
            rows, cols = np.arange(r0, size, step), np.arange(c0, size, step)
            rr, cc = np.meshgrid(rows, cols, indexing="ij")
            nb = (grid[(rr - half) % size, cc] + grid[(rr + half) % size, cc] + grid[rr, (cc - half) % size]
                  + grid[rr, (cc + half) % size]) / 4  # fmt: skip
            grid[rr, cc] = nb + rng.uniform(-scale, scale, nb.shape)
        step, scale = half, scale / decay
    grid -= grid.min()
    return grid / max(grid.max(), 1e-12)


@cache
def _frost_textures() -> tuple[np.ndarray, ...]:
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the frost corruption needs the frost photographs of the 'imagecorruptions-imaug' package; "
            "run `make install` (it installs that package's data without its dependencies)"
        )
    folder = Path(spec.submodule_search_locations[0]) / "frost"
    out = []
    for f in sorted(folder.glob("frost*")):
        img = np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255
        h, w = img.shape[:2]
        out.append(cv2.resize(img, (int(w * 0.2), int(h * 0.2)), interpolation=cv2.INTER_AREA))
    return tuple(out)


# ---- the corruptions (x: float32 in [0, 1], (H, W, 3)) ----------------------------------------------------


def gaussian_noise(x: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    return x + rng.normal(0, (0.04, 0.06, 0.08, 0.09, 0.10)[level - 1], x.shape)


def shot_noise(x: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    rate = (500, 250, 100, 75, 50)[level - 1]
    return rng.poisson(x * rate) / rate


def impulse_noise(x: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    amount = (0.01, 0.02, 0.03, 0.05, 0.07)[level - 1]
    r = rng.random(x.shape)
    x = x.copy()
    x[r < amount / 2] = 0.0  # pepper
    x[(r >= amount / 2) & (r < amount)] = 1.0  # salt
    return x


def speckle_noise(x: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    return x + x * rng.normal(0, (0.06, 0.10, 0.12, 0.16, 0.20)[level - 1], x.shape)


def gaussian_blur(x: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    return _blur(x, (0.4, 0.6, 0.7, 0.8, 1.0)[level - 1])


def glass_blur(x: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    sigma, delta, iterations = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))[level - 1]
    x = _blur(x, sigma)
    h, w = x.shape[:2]
    for _ in range(iterations):  # swap each pixel with a random neighbour, bottom-right to top-left
        offsets = rng.integers(-delta, delta, size=(h, w, 2))
        for i in range(h - delta - 1, delta - 1, -1):
            for j in range(w - delta - 1, delta - 1, -1):
                dy, dx = offsets[i, j]
                x[i, j], x[i + dy, j + dx] = x[i + dy, j + dx].copy(), x[i, j].copy()
    return _blur(x, sigma)


def defocus_blur(x: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    radius, alias = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))[level - 1]
    r = np.arange(-max(8, int(np.ceil(radius))), max(8, int(np.ceil(radius))) + 1)
    xx, yy = np.meshgrid(r, r)
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float32)
    disk = cv2.GaussianBlur(disk / disk.sum(), (3, 3), alias)
    return cv2.filter2D(x.astype(np.float32), -1, disk, borderType=cv2.BORDER_REFLECT)


def motion_blur(x: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    radius, sigma = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))[level - 1]
    return _motion(x, radius, sigma, rng.uniform(-45, 45))


def zoom_blur(x: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    zooms = np.arange(1, (1.06, 1.11, 1.16, 1.21, 1.26)[level - 1], 0.01)
    out = x.copy()
    for z in zooms:
        out += _clipped_zoom(x, z)
    return out / (len(zooms) + 1)


def snow(x: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    loc, scale, zoom, threshold, radius, sigma, blend = (
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    )[level - 1]
    h, w = x.shape[:2]
    flakes = _clipped_zoom(rng.normal(loc, scale, (h, w)), zoom)
    flakes[flakes < threshold] = 0
    flakes = np.clip(_motion(flakes, radius, sigma, rng.uniform(-135, -45)), 0, 1)[..., None]
    gray = cv2.cvtColor(x.astype(np.float32), cv2.COLOR_RGB2GRAY)[..., None]
    x = blend * x + (1 - blend) * np.maximum(x, gray * 1.5 + 0.5)
    return x + flakes + np.rot90(flakes, 2)


def frost(x: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    w_img, w_frost = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))[level - 1]
    textures = _frost_textures()
    tex = textures[rng.integers(len(textures))]
    h, w = x.shape[:2]
    top, left = rng.integers(0, tex.shape[0] - h), rng.integers(0, tex.shape[1] - w)
    return w_img * x + w_frost * tex[top : top + h, left : left + w]


def fog(x: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    strength, decay = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))[level - 1]
    h, w = x.shape[:2]
    size = 1 << int(np.ceil(np.log2(max(h, w))))
    peak = x.max()
    x = x + strength * _plasma(size, decay, rng)[:h, :w, None]
    return x * peak / (peak + strength)


def brightness(x: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    hsv = rgb2hsv(np.clip(x, 0, 1))
    hsv[..., 2] = np.clip(hsv[..., 2] + (0.05, 0.1, 0.15, 0.2, 0.3)[level - 1], 0, 1)
    return hsv2rgb(hsv)


def contrast(x: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    mean = x.mean(axis=(0, 1), keepdims=True)
    return (x - mean) * (0.75, 0.5, 0.4, 0.3, 0.15)[level - 1] + mean


def saturate(x: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    scale, shift = ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))[level - 1]
    hsv = rgb2hsv(np.clip(x, 0, 1))
    hsv[..., 1] = np.clip(hsv[..., 1] * scale + shift, 0, 1)
    return hsv2rgb(hsv)


def spatter(x: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    loc, scale, sigma, threshold, intensity, mode = (
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    )[level - 1]
    h, w = x.shape[:2]
    liquid = _blur(rng.normal(loc, scale, (h, w)), sigma)
    liquid[liquid < threshold] = 0
    if mode == 0:  # water: bright, slightly cyan droplets along the liquid's edges
        edges = cv2.Canny((liquid * 255).astype(np.uint8), 50, 150)
        dist = cv2.distanceTransform(255 - edges, cv2.DIST_L2, 5)
        dist = cv2.blur(np.minimum(dist, 20).astype(np.float32), (3, 3))
        dist = cv2.equalizeHist(np.clip(dist * 12, 0, 255).astype(np.uint8)).astype(np.float32)
        emboss = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], np.float32)
        dist = cv2.filter2D(dist, -1, emboss)
        dist = cv2.blur(np.clip(dist, 0, 255), (3, 3)) / 255
        mask = np.clip(dist * liquid, 0, 1)[..., None] * intensity
        color = np.array([175, 238, 238], np.float32) / 255
        return x + mask * color
    mud = (liquid > threshold).astype(np.float32)  # mud: dark brown blotches
    mud = _blur(mud, intensity)
    mud[mud < 0.8] = 0
    color = np.array([63, 42, 20], np.float32) / 255
    return x * (1 - mud[..., None]) + color * mud[..., None]


def elastic(x: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    h, w = x.shape[:2]
    alpha, sigma, affine = (np.array(p) * h for p in ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
                                                      (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))[level - 1])  # fmt: skip
    centre, side = np.array([h, w], np.float32) // 2, min(h, w) // 3
    src = np.float32([centre + side, [centre[0] + side, centre[1] - side], centre - side])
    dst = (src + rng.uniform(-affine, affine, src.shape)).astype(np.float32)
    x = cv2.warpAffine(
        x.astype(np.float32), cv2.getAffineTransform(src, dst), (w, h), borderMode=cv2.BORDER_REFLECT_101
    )
    if alpha == 0:
        return x
    dx = gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma, mode="reflect") * alpha
    dy = gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma, mode="reflect") * alpha
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = (yy + dy).reshape(-1), (xx + dx).reshape(-1)
    return np.stack([map_coordinates(x[..., c], coords, order=1, mode="reflect").reshape(h, w) for c in range(3)], -1)


def jpeg(x: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(_to_uint8(x)).save(buf, "JPEG", quality=(80, 65, 58, 50, 40)[level - 1])
    return np.asarray(Image.open(buf), dtype=np.float32) / 255


def pixelate(x: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    h, w = x.shape[:2]
    c = (0.95, 0.9, 0.85, 0.75, 0.65)[level - 1]
    img = Image.fromarray(_to_uint8(x)).resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), Image.BOX)
    return np.asarray(img, dtype=np.float32) / 255


def original(x: np.ndarray, level: int, rng: Rng) -> np.ndarray:
    return x


# bias index -> corruption, for the two protocols of LfF
TYPES = {
    0: (snow, frost, fog, brightness, contrast, spatter, elastic, jpeg, pixelate, saturate),
    1: (gaussian_noise, shot_noise, impulse_noise, speckle_noise, gaussian_blur, defocus_blur, glass_blur,
        motion_blur, zoom_blur, original),
}  # fmt: skip


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def corrupt(img: np.ndarray, fn, level: int, rng: Rng) -> np.ndarray:
    """Apply one corruption to a uint8 (H, W, 3) image; returns uint8 (H, W, 3)."""
    return _to_uint8(fn(img.astype(np.float32) / 255, level, rng))


def corrupt_chunk(args: tuple) -> np.ndarray:
    """Worker task: corrupt images[i] with corruption biases[i] of `kind`, drawing from one seeded stream."""
    images, biases, kind, level, seed = args
    cv2.setNumThreads(1)  # one process per core already
    rng = np.random.default_rng(seed)
    return np.stack([corrupt(img, TYPES[kind][b], level, rng) for img, b in zip(images, biases)])
