"""Learning from Failure (Nam et al., NeurIPS 2020; docs/protocols.md §8), as its reference code trains it.

Two networks of the target spec: a biased one trained with generalized cross-entropy, which amplifies its
reliance on easy (biased) cues, and a debiased one whose per-sample cross-entropy is weighted by how much harder
the sample is for the biased network: W = L_b / (L_b + L_d), from per-sample moving averages of both losses,
each divided by its class-wise maximum. One Adam over both networks equals the reference's two (Adam's state
is per parameter, and W carries no gradient).
"""

import torch
import torch.nn.functional as F

from denetdm.checks import number
from denetdm.methods.base import BuildContext, Method
from denetdm.models.experts import Classifier


def gce(logits: torch.Tensor, y: torch.Tensor, q: float) -> torch.Tensor:
    """Per-sample generalized cross-entropy as the reference computes it: CE * p_y^q * q, with p_y held constant.
    Its gradient is q * p_y^q times that of CE: the gradient of (1 - p_y^q) / q scaled by the constant q."""
    p_y = F.softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1).detach()
    return F.cross_entropy(logits, y, reduction="none") * p_y.pow(q) * q


def ema_update(ema: torch.Tensor, seen: torch.Tensor, idx: torch.Tensor, value: torch.Tensor, alpha: float) -> None:
    """In place: ema[idx] = alpha * ema[idx] + (1 - alpha) * value, except that a first visit stores the value."""
    first = ~seen[idx]
    ema[idx] = torch.where(first, value, alpha * ema[idx] + (1 - alpha) * value)
    seen[idx] = True


def class_max(values: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The maximum of `values` over the samples of each class, shape (num_classes,)."""
    out = torch.zeros(num_classes, dtype=values.dtype, device=values.device)
    return out.scatter_reduce(0, labels, values, reduce="amax", include_self=True)


class LfF(Method):
    """Biased (`biased` head) and debiased (`target` head, the result) networks trained together."""

    capturable = True

    heads = ("target", "biased")

    def __init__(
        self,
        biased: Classifier,
        debiased: Classifier,
        labels: torch.Tensor,
        num_classes: int,
        optimizer: torch.optim.Optimizer | None,
        q: float,
        alpha: float,
    ) -> None:
        super().__init__()
        self.biased, self.debiased, self.optimizer = biased, debiased, optimizer
        self.q, self.alpha, self.num_classes = float(q), float(alpha), num_classes
        self.register_buffer("labels", labels.clone())
        for name in ("ema_b", "ema_d"):  # per-sample moving averages of each network's cross-entropy
            self.register_buffer(name, torch.zeros(len(labels), dtype=torch.float32, device=labels.device))
        self.register_buffer("seen", torch.zeros(len(labels), dtype=torch.bool, device=labels.device))

    @classmethod
    def check(cls, phase: str, schedules: dict, q: float, alpha: float) -> None:
        """0 < q <= 1, 0 <= alpha < 1."""
        number("method.q", q, strict=True, high=1.0)
        number("method.alpha", alpha, high=0.999999)

    @classmethod
    def build(cls, ctx: BuildContext, previous: Method | None, q: float, alpha: float) -> "LfF":
        """Two fresh networks of the target spec (the biased one first) and one optimiser over both."""
        biased = Classifier(ctx.backbone("target"), ctx.num_classes)
        debiased = Classifier(ctx.backbone("target"), ctx.num_classes)
        optimizer = ctx.make_optimizer([*biased.parameters(), *debiased.parameters()])
        return cls(biased, debiased, ctx.train.y, ctx.num_classes, optimizer, q=q, alpha=alpha)

    @torch.no_grad()
    def weights(self, ce_b: torch.Tensor, ce_d: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Update both moving averages with this batch, then W = L_b / (L_b + L_d + 1e-8) from the averages
        divided by their class-wise maxima over the training set."""
        ema_update(self.ema_b, self.seen.clone(), idx, ce_b, self.alpha)
        ema_update(self.ema_d, self.seen, idx, ce_d, self.alpha)
        lb = self.ema_b[idx] / class_max(self.ema_b, self.labels, self.num_classes)[y]
        ld = self.ema_d[idx] / class_max(self.ema_d, self.labels, self.num_classes)[y]
        return lb / (lb + ld + 1e-8)

    def update(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.autocast(x):
            logit_b, logit_d = self.biased(x).float(), self.debiased(x).float()
        ce_d = F.cross_entropy(logit_d, y, reduction="none")
        w = self.weights(F.cross_entropy(logit_b, y, reduction="none").detach(), ce_d.detach(), y, idx)
        loss_b, loss_d = gce(logit_b, y, self.q).mean(), (ce_d * w).mean()
        loss = loss_b + loss_d
        self.step(loss)
        return {
            "loss": loss.detach(),
            "loss_biased": loss_b.detach(),
            "loss_debiased": loss_d.detach(),
            "weight": w.mean(),
        }

    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.autocast(x):
            return {"target": self.debiased(x), "biased": self.biased(x)}
