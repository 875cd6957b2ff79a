"""In-memory biased splits: tensors on the training device, batched by index (no per-item DataLoader)."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import torch

from denetdm.checks import positive_int


@dataclass
class Split:
    """One split: images x, target labels y and bias labels b (bias labels are for evaluation only)."""

    x: torch.Tensor
    y: torch.Tensor
    b: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str, normalize: tuple | None = None, channels_last: bool = False) -> "Split":
        """Move to `device`, turning uint8 images into float32 in [0, 1] (then normalised) once, up front."""
        x = self.x.to(device)
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        if normalize is not None:
            mean, std = (torch.tensor(v, dtype=x.dtype, device=x.device).view(1, -1, 1, 1) for v in normalize)
            x = x.sub_(mean).div_(std)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return Split(x, self.y.to(device), self.b.to(device))

    def _pick(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """Sorted indices of `n` samples drawn at random with this split's share of bias-conflicting samples."""
        conflicting = (self.y != self.b).nonzero().flatten()
        aligned = (self.y == self.b).nonzero().flatten()
        n_conf = round(n * len(conflicting) / len(self))
        pick = [
            group[torch.randperm(len(group), generator=gen)[:k]]
            for group, k in ((conflicting, n_conf), (aligned, n - n_conf))
        ]
        return torch.cat(pick).sort().values

    def take(self, idx: torch.Tensor) -> "Split":
        """The samples at `idx`."""
        return Split(self.x[idx], self.y[idx], self.b[idx])

    def subset(self, n: int, gen: torch.Generator) -> "Split":
        """`n` samples drawn at random, keeping the share of bias-conflicting samples (exactly, up to rounding)."""
        return self.take(self._pick(n, gen))

    def split_off(self, n: int, gen: torch.Generator) -> tuple["Split", "Split"]:
        """(the rest, `n` samples drawn like `subset`): a hold-out with this split's bias ratio."""
        held = self._pick(n, gen)
        keep = torch.ones(len(self), dtype=torch.bool)
        keep[held] = False
        return self.take(keep.nonzero().flatten()), self.take(held)

    def batches(
        self, batch_size: int, gen: torch.Generator | None = None, drop_last: bool = False
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """Yield (x, y, idx) batches: shuffled with `gen` when given (the last partial one dropped if asked),
        else in order (all kept)."""
        n = len(self)
        if gen is None:
            for i in range(0, n, batch_size):
                idx = torch.arange(i, min(i + batch_size, n), device=self.y.device)
                yield self.x[i : i + batch_size], self.y[i : i + batch_size], idx
            return
        for idx in self.order(torch.randperm(n, generator=gen), batch_size, drop_last):
            yield self.batch(idx)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The training batch (x, y, idx) at `idx`."""
        return self.x[idx], self.y[idx], idx

    def order(self, epoch: torch.Tensor, batch_size: int, drop_last: bool = False) -> Iterator[torch.Tensor]:
        """An epoch's samples (`epoch`: indices drawn on the host, see Method.epoch_order) as batches of indices
        on the split's device (the last partial one dropped if asked)."""
        epoch = epoch.to(self.y.device)  # one host-to-device copy per epoch
        n = len(epoch)
        for i in range(0, n - batch_size + 1 if drop_last else n, batch_size):
            yield epoch[i : i + batch_size]


def check_count(key: str, n: object) -> int | None:
    """A quick-run size `dataset.<key>`: a positive integer, or None for the whole split."""
    return positive_int(f"dataset.{key}", n, allow_none=True)


def splits_from(tensors: dict[str, torch.Tensor]) -> dict[str, Split]:
    """The train/val/test splits stored as `<split>_x`, `<split>_y`, `<split>_b` (the dataset cache format)."""
    return {s: Split(tensors[f"{s}_x"], tensors[f"{s}_y"], tensors[f"{s}_b"]) for s in ("train", "val", "test")}


@dataclass
class BiasedData:
    """Train / validation / test splits of a biased dataset and what a model needs to know of them."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    num_biases: int
    info: dict = field(default_factory=dict)
    normalize: tuple | None = None  # (mean, std) per channel, applied when moved to the device
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None  # training batches only
    val_biased: Split | None = None  # held out of training with its bias ratio (selection=val_biased_nolabels)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def splits(self) -> dict[str, Split]:
        """The evaluation splits by name."""
        out = {"val": self.val, "test": self.test}
        return out if self.val_biased is None else {**out, "val_biased": self.val_biased}

    def to(self, device: torch.device | str, channels_last: bool = False) -> "BiasedData":
        """All splits on `device` as (normalised) float tensors."""
        moved = {
            k: s.to(device, self.normalize, channels_last) for k, s in {"train": self.train, **self.splits()}.items()
        }
        return replace(self, **moved, info=dict(self.info))

    def subsets(self, train: int | None, evaluation: int | None, gen: torch.Generator) -> "BiasedData":
        """Quick runs: at most `train` training and `evaluation` validation/test samples, each drawn with its
        split's bias ratio (a split smaller than asked is kept whole)."""
        out = self
        for names, n, key in ((("train",), train, "subset"), (tuple(self.splits()), evaluation, "eval_subset")):
            if check_count(key, n) is None:
                continue
            for name in names:
                if n < len(getattr(out, name)):
                    out = replace(out, **{name: getattr(out, name).subset(n, gen)})
        return out
