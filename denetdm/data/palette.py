"""The Colored MNIST colour protocol of LfF (docs/protocols.md §3), shared by every coloured dataset."""

import torch

# Mean colour of bias class b (RGB in [0, 1]); the aligned colour of target class c is colour c.
COLORS = torch.tensor(
    [
        [0.983682, 0.312519, 0.168575],
        [0.990530, 0.915605, 0.351512],
        [0.672964, 0.461070, 0.579808],
        [0.783252, 0.831556, 0.601329],
        [0.088016, 0.777963, 0.981808],
        [0.321393, 0.961055, 0.446450],
        [0.024616, 0.235650, 0.758666],
        [0.555247, 0.101580, 0.761763],
        [0.207723, 0.392949, 0.018702],
        [0.833658, 0.202409, 0.266943],
    ],
    dtype=torch.float64,
)

# Per-channel colour noise std by severity: a higher severity is a cleaner, stronger bias.
COLOR_STD = {1: 0.05, 2: 0.02, 3: 0.01, 4: 0.005, 5: 0.002}


def color_std(severity: int) -> float:
    """Colour noise std of a severity level (1..5)."""
    from denetdm.errors import ConfigError

    if severity not in COLOR_STD:
        raise ConfigError(f"severity must be one of {sorted(COLOR_STD)}, got {severity!r}")
    return COLOR_STD[severity]


def colorize(gray: torch.Tensor, bias: torch.Tensor, std: float, gen: torch.Generator) -> torch.Tensor:
    """Colour grayscale uint8 images (N, H, W) by bias label: one noisy colour per image, (N, 3, H, W) uint8.

    colour = clamp(COLORS[b] + N(0, std^2) per channel, 0, 1); the digit (foreground) is multiplied by it,
    so the black background stays black.
    """
    noise = torch.randn(len(bias), 3, generator=gen, dtype=torch.float64) * std
    color = (COLORS[bias] + noise).clamp(0, 1).to(torch.float32)
    out = torch.empty(len(bias), 3, *gray.shape[1:], dtype=torch.uint8)
    for i in range(0, len(bias), 8192):  # chunks keep the float temporaries small
        chunk = gray[i : i + 8192].to(torch.float32).unsqueeze(1) * color[i : i + 8192, :, None, None]
        out[i : i + 8192] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return out
