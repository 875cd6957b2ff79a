"""A procedural Colored-MNIST look-alike: drawn shapes instead of digits, so nothing is downloaded.

Ten shape classes are rendered as anti-aliased strokes at a random position, size, rotation and stroke
width, then coloured by exactly the Colored MNIST protocol (palette, ratios, severity).
"""

import math

import torch

from denetdm.checks import positive_int
from denetdm.data.colored import ColoredDataset
from denetdm.errors import ConfigError
from denetdm.seeding import generator


def _polygon(n: int, radius: float = 1.0, phase: float = 0.0) -> list[tuple[float, float, float, float]]:
    pts = [
        (radius * math.cos(phase + 2 * math.pi * k / n), radius * math.sin(phase + 2 * math.pi * k / n))
        for k in range(n)
    ]
    return [(*pts[k], *pts[(k + 1) % n]) for k in range(n)]


# Each shape is a list of segments (x0, y0, x1, y1) in a [-1, 1] box, y pointing down.
SHAPES: list[list[tuple[float, float, float, float]]] = [
    _polygon(16),  # 0 circle
    [(0, -1, 0, 1)],  # 1 vertical bar
    _polygon(3, phase=-math.pi / 2),  # 2 triangle
    _polygon(4, radius=math.sqrt(2), phase=math.pi / 4),  # 3 square
    [(-1, -1, 1, 1), (-1, 1, 1, -1)],  # 4 X
    [(0, -1, 0, 1), (-1, 0, 1, 0)],  # 5 plus
    [(-1, -1, 1, -1), (0, -1, 0, 1)],  # 6 T
    [(-0.6, -1, -0.6, 1), (-0.6, 1, 0.8, 1)],  # 7 L
    [(-1, -0.45, 1, -0.45), (-1, 0.45, 1, 0.45)],  # 8 equals
    [(-1, 0.6, 0, -0.7), (0, -0.7, 1, 0.6)],  # 9 chevron
]


def render_shapes(labels: torch.Tensor, gen: torch.Generator, size: int = 28, chunk: int = 1024) -> torch.Tensor:
    """Grayscale uint8 images (N, size, size) of the shapes named by `labels`, randomly placed."""
    n = len(labels)
    # Roughly centred, like MNIST digits, so that an MLP can learn the shapes from ~10k images.
    scale = 0.55 + 0.3 * torch.rand(n, generator=gen)  # half-size, in units of the half image
    angle = (torch.rand(n, generator=gen) - 0.5) * math.radians(30)
    room = (0.95 - scale * 1.05).clamp(min=0, max=0.3)
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * room[:, None]
    stroke = 0.1 + 0.08 * torch.rand(n, generator=gen)
    # pixel centres in the same [-1, 1] frame
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    py, px = torch.meshgrid(coords, coords, indexing="ij")
    pix = torch.stack([px.flatten(), py.flatten()], 1)  # (P, 2)
    out = torch.empty(n, size * size, dtype=torch.uint8)
    # one class at a time: each shape costs only its own number of segments
    for c, shape in enumerate(SHAPES):
        segs = torch.tensor(shape, dtype=torch.float32).view(-1, 2, 2)  # (S, endpoint, xy)
        members = (labels == c).nonzero().flatten()
        for sl in members.split(chunk):
            cos, sin = angle[sl].cos(), angle[sl].sin()
            rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (n, 2, 2)
            s = torch.einsum("nij,sej->nsei", rot, segs) * scale[sl, None, None, None] + shift[sl, None, None, :]
            a, ab = s[:, :, 0], s[:, :, 1] - s[:, :, 0]  # (n, S, 2)
            ap = pix[None, None] - a[:, :, None]  # (n, S, P, 2)
            t = ((ap * ab[:, :, None]).sum(-1) / ab.pow(2).sum(-1).clamp(min=1e-9)[:, :, None]).clamp(0, 1)
            dist = (ap - t[..., None] * ab[:, :, None]).pow(2).sum(-1).amin(1).sqrt()  # (n, P)
            # one-pixel anti-aliased edge at half the stroke width
            ink = ((stroke[sl, None] / 2 - dist) * (size / 2) + 0.5).clamp(0, 1)
            out[sl] = (ink * 255).round().to(torch.uint8)
    return out.view(n, size, size)


MAX_SIZE = 1_000_000  # 28x28 RGB images: about 2.4 GB as uint8, far more as float on the device


def _size(key: str, value: object) -> int:
    if positive_int(key, value) > MAX_SIZE:
        raise ConfigError(
            f"{key} must be at most {MAX_SIZE:,} (the synthetic images are generated in memory), got {value}"
        )
    return value


class SyntheticShapes(ColoredDataset):
    """Coloured procedural shapes: shape = target, colour = bias; generated in seconds."""

    def __init__(self, train_size: int = 11000, test_size: int = 2000, **kwargs) -> None:
        super().__init__(**kwargs)
        self.train_size, self.test_size = (
            _size(f"dataset.{k}", v) for k, v in (("train_size", train_size), ("test_size", test_size))
        )

    def source_params(self) -> dict:
        return {"shapes": "v3", "train_size": self.train_size, "test_size": self.test_size}

    def source(self) -> tuple[torch.Tensor, ...]:
        out = []
        for split, n in (("train", self.train_size), ("test", self.test_size)):
            gen = generator(self.seed, f"shapes-{split}")
            labels = torch.arange(n) % self.num_classes
            labels = labels[torch.randperm(n, generator=gen)]
            out += [render_shapes(labels, gen), labels]
        return tuple(out)
