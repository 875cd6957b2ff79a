"""Disentangled Feature Augmentation (Lee et al., NeurIPS 2021; docs/protocols.md §8), as its authors' code trains it.

Two encoders of the target spec, intrinsic (E_i) and bias (E_b), and two linear classifiers on their concatenated
features z = [z_i, z_b]: C_i reads z with z_b detached and learns the class weighted as LfF weights it (the
per-sample moving averages of both classifiers' cross-entropies, each divided by its class-wise maximum); C_b
reads z with z_i detached and learns with generalized cross-entropy, so E_b takes the easy, biased cue. After
`swap_after` epochs, each batch also trains on swapped features [z_i, z_b of another sample of the batch]: C_i
keeps the sample's own label, C_b takes the other sample's. Loss: L_dis + lambda_swap * L_swap, with
L_dis = W CE(C_i) + lambda_dis_align GCE(C_b) and L_swap = W CE(C_i(swap)) + lambda_swap_align GCE(C_b(swap)).
One Adam over both sides equals the reference's two (Adam's state is per parameter).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from denetdm.checks import number
from denetdm.methods.base import BuildContext, Method
from denetdm.methods.lff import class_max, ema_update, gce


class DFA(Method):
    """Intrinsic (`target` head, the result) and bias (`biased` head) sides trained together."""

    heads = ("target", "biased")

    def __init__(
        self,
        encoders: tuple[nn.Module, nn.Module],
        labels: torch.Tensor,
        num_classes: int,
        optimizer: torch.optim.Optimizer | None,
        hparams: dict,
    ) -> None:
        super().__init__()
        self.intrinsic, self.bias = encoders
        width = self.intrinsic.num_features + self.bias.num_features
        self.head_i, self.head_b = nn.Linear(width, num_classes), nn.Linear(width, num_classes)
        self.optimizer, self.num_classes, self.hp = optimizer, num_classes, hparams
        self.register_buffer("labels", labels.clone())
        for name in ("ema_b", "ema_d"):  # per-sample moving averages of each side's cross-entropy
            self.register_buffer(name, torch.zeros(len(labels), dtype=torch.float32, device=labels.device))
        self.register_buffer("seen", torch.zeros(len(labels), dtype=torch.bool, device=labels.device))
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))  # epochs begun: the swap's curriculum
        self.register_buffer("swap_key", torch.zeros(len(labels), device=labels.device))  # per sample, this epoch
        self.swapping = False

    @classmethod
    def check(
        cls,
        phase: str,
        schedules: dict,
        q: float,
        alpha: float,
        lambda_dis_align: float,
        lambda_swap_align: float,
        lambda_swap: float,
        swap_after: float,
    ) -> None:
        """0 < q <= 1, 0 <= alpha < 1, loss weights >= 0, swap_after >= 0 epochs."""
        number("method.q", q, strict=True, high=1.0)
        number("method.alpha", alpha, high=0.999999)
        for key, value in (
            ("lambda_dis_align", lambda_dis_align),
            ("lambda_swap_align", lambda_swap_align),
            ("lambda_swap", lambda_swap),
            ("swap_after", swap_after),
        ):
            number(f"method.{key}", value)

    @classmethod
    def build(
        cls,
        ctx: BuildContext,
        previous: Method | None,
        q: float,
        alpha: float,
        lambda_dis_align: float,
        lambda_swap_align: float,
        lambda_swap: float,
        swap_after: float,
    ) -> "DFA":
        """Two fresh encoders of the target spec (the intrinsic one first), their heads and one optimiser."""
        hparams = dict(q=q, alpha=alpha, lambda_dis_align=lambda_dis_align, lambda_swap_align=lambda_swap_align)
        hparams |= dict(lambda_swap=lambda_swap, swap_after=swap_after)
        encoders = (ctx.backbone("target"), ctx.backbone("target"))
        method = cls(encoders, ctx.train.y, ctx.num_classes, None, {k: float(v) for k, v in hparams.items()})
        method.optimizer = ctx.make_optimizer(method.parameters())
        return method

    def epoch_order(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """A shuffle, and for each sample a random key: a batch swaps bias features in the order of its keys."""
        order = super().epoch_order(n, gen)
        self.swap_key.copy_(torch.rand(n, generator=gen))
        self.epoch += 1
        self.swapping = self.epoch.item() > self.hp["swap_after"]  # the reference: from step curr_step + 1
        return order

    @torch.no_grad()
    def weights(self, ce_b: torch.Tensor, ce_d: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """LfF's weights W = L_b / (L_b + L_d + 1e-8) from both moving averages, updated with this batch."""
        ema_update(self.ema_d, self.seen.clone(), idx, ce_d, self.hp["alpha"])
        ema_update(self.ema_b, self.seen, idx, ce_b, self.hp["alpha"])
        lb = self.ema_b[idx] / class_max(self.ema_b, self.labels, self.num_classes)[y]
        ld = self.ema_d[idx] / class_max(self.ema_d, self.labels, self.num_classes)[y]
        return lb / (lb + ld + 1e-8)

    def sides(self, z_i: torch.Tensor, z_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(C_i logits, C_b logits) of z = [z_i, z_b], each side's gradient reaching its own encoder only."""
        return self.head_i(torch.cat([z_i, z_b.detach()], 1)), self.head_b(torch.cat([z_i.detach(), z_b], 1))

    def update(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        hp = self.hp
        with self.autocast(x):
            z_i, z_b = self.intrinsic(x).float(), self.bias(x).float()
        logit_i, logit_b = self.sides(z_i, z_b)
        ce_i = F.cross_entropy(logit_i, y, reduction="none")
        w = self.weights(F.cross_entropy(logit_b, y, reduction="none").detach(), ce_i.detach(), y, idx)
        loss_dis = (ce_i * w).mean() + hp["lambda_dis_align"] * gce(logit_b, y, hp["q"]).mean()
        loss_swap = torch.zeros((), device=x.device)
        if self.swapping:
            perm = self.swap_key[idx].argsort()
            swap_i, swap_b = self.sides(z_i, z_b[perm])
            loss_swap = (F.cross_entropy(swap_i, y, reduction="none") * w).mean()
            loss_swap = loss_swap + hp["lambda_swap_align"] * gce(swap_b, y[perm], hp["q"]).mean()
        loss = loss_dis + hp["lambda_swap"] * self.swapping * loss_swap
        self.step(loss)
        return {
            "loss": loss.detach(),
            "loss_dis": loss_dis.detach(),
            "loss_swap": loss_swap.detach(),
            "weight": w.mean(),
        }

    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.autocast(x):
            z = torch.cat([self.intrinsic(x), self.bias(x)], 1)
            return {"target": self.head_i(z), "biased": self.head_b(z)}
