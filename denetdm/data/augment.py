"""Training augmentation on whole batches on the training device: no per-image Python, no DataLoader."""

from collections.abc import Callable

import torch
import torch.nn.functional as F

# the per-channel statistics the CIFAR protocols normalise with (docs/protocols.md §4), also used for BFFHQ
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class BatchAugment:
    """Random crop with zero padding and horizontal flip of a (N, C, H, W) float batch.

    The batch is already normalised, so the padding uses each channel's normalised zero: the result equals
    torchvision's pad-crop-flip on raw images followed by normalisation.
    """

    def __init__(self, crop_padding: int = 4, flip: bool = True, fill: list[float] | None = None) -> None:
        self.pad, self.flip = int(crop_padding), bool(flip)
        self.fill = fill

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.pad:
            xp = F.pad(x, (self.pad,) * 4)
            if self.fill is not None:  # put the normalised zero into the border
                border = torch.ones(1, 1, h + 2 * self.pad, w + 2 * self.pad, dtype=x.dtype, device=x.device)
                border[:, :, self.pad : self.pad + h, self.pad : self.pad + w] = 0
                xp = xp + border * torch.tensor(self.fill, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
            dy = torch.randint(0, 2 * self.pad + 1, (n,), generator=gen).to(x.device)
            dx = torch.randint(0, 2 * self.pad + 1, (n,), generator=gen).to(x.device)
            rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (n, 1, h, 1)
            cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (n, 1, 1, w)
            batch = torch.arange(n, device=x.device)[:, None, None, None]
            chan = torch.arange(c, device=x.device)[None, :, None, None]
            x = xp[batch, chan, rows, cols]
        if self.flip:
            flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 and c > 1 else x


def views(x: torch.Tensor, augment: Augment | None, gen: torch.Generator, n: int):
    """A training batch as a method's step asks for it (`Method.views`): 0, the stored images; 1, one augmented
    view (the stored images where the dataset does not augment); 2, a pair of views augmented independently."""
    if n == 0 or augment is None:
        return (x, x) if n == 2 else x
    return augment(x, gen) if n == 1 else (augment(x, gen), augment(x, gen))
