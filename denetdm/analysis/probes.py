"""Linear probes and effective rank on frozen features (docs/protocols.md §9).

A probe is a multinomial logistic regression fitted on cached features with full-batch L-BFGS, on a seeded
part of the samples, and scored on the rest: how linearly decodable an attribute (the class y or the bias b)
is from a network's features. Probes only read features; they never change training or model selection.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from denetdm.checks import positive_int
from denetdm.errors import ConfigError


def _split(n: int, holdout: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = max(1, min(n - 1, round(n * holdout)))
    return perm[k:], perm[:k]


@torch.no_grad()
def _standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    return [(t - mean) / std for t in (train, *others)]


def probe_accuracy(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    seed: int = 0,
    holdout: float = 0.3,
    steps: int = 100,
    weight_decay: float = 1e-3,
) -> float:
    """Held-out accuracy of a linear classifier fitted on `features` (N, D) for `labels` (N,)."""
    if len(features) < 4:
        raise ConfigError(f"a probe needs at least 4 samples, got {len(features)}")
    x = features.detach().float().flatten(1).cpu()
    y = labels.detach().long().cpu()
    fit, held = _split(len(x), holdout, seed)
    x_fit, x_held = _standardise(x[fit], x[held])
    gen = torch.Generator().manual_seed(seed + 1)
    w = (torch.randn(x.shape[1], num_classes, generator=gen) * 0.01).requires_grad_(True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x_fit @ w + b, y[fit]) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return ((x_held @ w + b).argmax(1) == y[held]).float().mean().item()


@torch.no_grad()
def effective_rank(matrix: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values) of the centred (N, D) matrix (Roy and Vetterli, 2007):
    k for k equal singular values, less when they are unequal."""
    eps = torch.finfo(matrix.dtype if matrix.is_floating_point() else torch.float64).eps
    m = matrix.detach().double().flatten(1).cpu()
    m = m - m.mean(0)
    s = torch.linalg.svdvals(m)
    # numerical zeros (numpy's matrix_rank tolerance, at the input's precision) are not directions
    s = s[s > s.max() * max(m.shape) * eps] if s.numel() and s.max() > 0 else s[:0]
    if s.numel() == 0:
        return 0.0
    p = s / s.sum()
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def class_mean_rank(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Effective rank of the attribute's class means: the dimension of the subspace that separates its values."""
    x = features.detach().double().flatten(1).cpu()
    y = labels.detach().long().cpu()
    means = torch.stack([x[y == c].mean(0) for c in range(num_classes) if (y == c).any()])
    return effective_rank(means)


@torch.no_grad()
def split_features(method, split, batch_size: int = 1024) -> dict[str, torch.Tensor]:
    """`method.features` over a whole split, in eval mode, by head (on the CPU)."""
    was_training = method.training
    method.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    for x, _, _ in split.batches(batch_size):
        for head, f in method.features(x).items():
            parts.setdefault(head, []).append(f.float().flatten(1).cpu())
    method.train(was_training)
    return {head: torch.cat(fs) for head, fs in parts.items()}


def probe_all(method, data, stage: str, seed: int, split: str = "val", steps: int = 100) -> dict[str, float]:
    """Probe accuracies of the class (y) and the bias (b) from every head's features on one evaluation split,
    keyed `<stage>/<head>/probe/<y|b>`, the effective rank of the features (`.../rank`) and of the class and bias
    means (`.../rank_y`, `rank_b`); empty when the method exposes no features."""
    splits = data.splits()
    if split not in splits:
        raise ConfigError(f"probe.split={split!r} is not an evaluation split of this dataset: {sorted(splits)}")
    s = splits[split]
    out = {}
    for head, feats in split_features(method, s).items():
        key = f"{stage}/{head}/probe/"
        for attr, labels, k in (("y", s.y, data.num_classes), ("b", s.b, data.num_biases)):
            out[key + attr] = probe_accuracy(feats, labels, k, seed=seed, steps=steps)
            out[f"{key}rank_{attr}"] = class_mean_rank(feats, labels, k)  # how many directions its means span
        out[key + "rank"] = effective_rank(feats)
    return out


@dataclass(frozen=True)
class ProbeSchedule:
    """When the Trainer probes (`probe.*` in the config): every `every` epochs (0: never), and before the first
    epoch where `at_init` (recorded as epoch 0), on `split`."""

    every: int = 0
    split: str = "val"
    steps: int = 100
    seed: int = 0
    at_init: bool = False

    def check(self) -> "ProbeSchedule":
        """One clear error for a bad `probe.*` value."""
        if not isinstance(self.every, int) or isinstance(self.every, bool) or self.every < 0:
            raise ConfigError(f"probe.every must be an integer >= 0 (0: no probes), got {self.every!r}")
        positive_int("probe.steps", self.steps)
        if not isinstance(self.at_init, bool):
            raise ConfigError(f"probe.at_init must be true or false, got {self.at_init!r}")
        if not isinstance(self.split, str):
            raise ConfigError(f"probe.split must name an evaluation split (val or test), got {self.split!r}")
        return self

    def due(self, epoch: int) -> bool:
        """Whether this epoch is probed."""
        return self.every > 0 and epoch % self.every == 0

    def measure(self, method, data, stage: str, epoch: int) -> dict[str, float]:
        """The probe accuracies of this epoch (seeded by the run's seed and the epoch)."""
        return probe_all(method, data, stage, seed=self.seed * 1000 + epoch, split=self.split, steps=self.steps)
