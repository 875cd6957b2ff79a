"""The method interface: the training loop knows nothing else about a method (DomainBed style)."""

import torch
import torch.nn as nn

from denetdm.data.splits import Split


class Method(nn.Module):
    """A trainable method: `update` takes one step on a batch, `predict` returns logits per readout head."""

    optimizer: torch.optim.Optimizer | None = None
    amp: bool = False  # bf16 autocast on CUDA

    def autocast(self, x: torch.Tensor) -> torch.autocast:
        """bf16 autocast where asked for and the batch is on CUDA; a no-op elsewhere."""
        return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.amp and x.is_cuda)

    def prepare(self, train: Split, augmented: bool) -> None:
        """Called once before training on `train` (e.g. to precompute outputs of frozen parts)."""

    def update(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimisation step; returns detached scalar losses (tensors, so the loop never syncs)."""
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every readout head, by head name (the names the metrics are recorded under)."""
        raise NotImplementedError
