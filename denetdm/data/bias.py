"""Bias-label assignment of the LfF protocol (seeded) and the validation hold-out."""

import torch

from denetdm.errors import ConfigError


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
