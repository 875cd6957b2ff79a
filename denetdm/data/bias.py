"""Bias-label assignment of the LfF protocol (seeded) and the validation hold-out."""

import numpy as np
import torch

from denetdm.errors import ConfigError
from denetdm.seeding import generator


def check_conflict_pct(conflict_pct: float) -> float:
    """Validate a conflicting-sample percentage (strictly between 0 and 100)."""
    try:
        value = float(conflict_pct)
    except (TypeError, ValueError):
        raise ConfigError(f"dataset.conflict_pct must be a number, got {conflict_pct!r}") from None
    if not 0 < value < 100:
        raise ConfigError(
            f"dataset.conflict_pct is a percentage strictly between 0 and 100 "
            f"(paper: 0.5, 1, 2, 5), got {conflict_pct!r}"
        )
    return value


def assign_bias(labels: torch.Tensor, aligned_frac: float, num_biases: int, gen: torch.Generator) -> torch.Tensor:
    """Bias labels for target labels: per class, a share `aligned_frac` gets the class's own bias and the
    rest is spread evenly over the other biases.

    As in LfF, the class's samples are cut into contiguous blocks at round(n_c * cumulative ratio), block k
    getting bias k; this gives the exact published counts (598 conflicting at 1 % on MNIST). Unlike LfF,
    the samples are shuffled with `gen` first instead of taking dataset order.
    """
    bias = torch.empty_like(labels)
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n = len(idx)
        cum, start = 0.0, 0
        for k in range(num_biases):
            cum += aligned_frac if k == c else (1 - aligned_frac) / (num_biases - 1)
            end = n if k == num_biases - 1 else round(n * cum)
            bias[idx[start:end]] = k
            start = end
    return bias


def holdout(n: int, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Split range(n) into (kept, held-out) index tensors, `size` held out at random."""
    if not 0 <= size < n:
        raise ConfigError(f"dataset.val_size must be between 0 and {n - 1}, got {size}")
    perm = torch.randperm(n, generator=gen)
    return perm[size:].sort().values, perm[:size].sort().values


def lff_splits(
    x_train, y_train, x_test, y_test, conflict_pct: float, val_size: int, num_biases: int, seed: int
) -> dict[str, tuple]:
    """The LfF split protocol: {split: (images, labels, bias labels)} for train, val and test.

    `val_size` images are held out of the training source; training is (100 - conflict_pct) % aligned,
    validation and test are 1/num_biases aligned (bias uniform over the values). Images may be numpy arrays
    or tensors; labels come back as tensors. A dataset then renders each image with its bias label.
    """
    y_train, y_test = torch.as_tensor(y_train, dtype=torch.long), torch.as_tensor(y_test, dtype=torch.long)
    keep, held = holdout(len(y_train), val_size, generator(seed, "val-holdout"))

    def take(x, idx: torch.Tensor):
        return x[idx.numpy()] if isinstance(x, np.ndarray) else x[idx]

    parts = {
        "train": (take(x_train, keep), y_train[keep], 1 - conflict_pct / 100),
        "val": (take(x_train, held), y_train[held], 1 / num_biases),
        "test": (x_test, y_test, 1 / num_biases),
    }
    return {
        split: (x, y, assign_bias(y, aligned, num_biases, generator(seed, f"{split}-bias")))
        for split, (x, y, aligned) in parts.items()
    }
