"""In-memory biased splits: tensors on the training device, batched by index (no per-item DataLoader)."""

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch


@dataclass
class Split:
    """One split: images x, target labels y and bias labels b (bias labels are for evaluation only)."""

    x: torch.Tensor
    y: torch.Tensor
    b: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> "Split":
        """Move to `device`, turning uint8 images into float32 in [0, 1] once, up front."""
        x = self.x.to(device)
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        return Split(x, self.y.to(device), self.b.to(device))

    def batches(self, batch_size: int, gen: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
        """Yield (x, y, idx) batches: shuffled with `gen` when given, else in order (last batch kept)."""
        n = len(self)
        if gen is None:
            for i in range(0, n, batch_size):
                idx = torch.arange(i, min(i + batch_size, n), device=self.y.device)
                yield self.x[i : i + batch_size], self.y[i : i + batch_size], idx
            return
        perm = torch.randperm(n, generator=gen).to(self.y.device)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            yield self.x[idx], self.y[idx], idx


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

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def splits(self) -> dict[str, Split]:
        """The evaluation splits by name."""
        return {"val": self.val, "test": self.test}

    def to(self, device: torch.device | str) -> "BiasedData":
        """All splits on `device` as float tensors."""
        return BiasedData(
            self.name,
            self.train.to(device),
            self.val.to(device),
            self.test.to(device),
            self.num_classes,
            self.num_biases,
            dict(self.info),
        )
