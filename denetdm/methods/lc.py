"""Logit Correction (Liu et al., ICLR 2023; docs/protocols.md §8), as its authors' code trains it.

Two networks of the target spec. The biased one learns with generalized cross-entropy at a tenth of the learning
rate; its softmax (at temperature `tau`) gives each sample a bias pseudo-label, its argmax. A (class x pseudo-label)
table keeps a moving average of the biased model's probability of the true class in each cell (`ema_alpha`, the
first visit of a cell stores the value; Colored MNIST's branch of its code uses the table as it is, the others
divide each column by its sum): the group prior of a sample with pseudo-label a is the table's column a. The
debiased model learns with the logit-corrected loss CE(logits + log(prior^eta + 1e-4), y) on group mix-up: each
sample mixed with a same-class sample whose label and pseudo-label differ (a random one of the batch's; where a
class has none, a random same-class sample), lam ~ U(1 - 2a, 1 - a), the priors mixed alike; a = 0.5 ramps up as
exp(-5 (1 - t / rampup)^2) over `rampup_epochs`. Loss: LC + lambda_dis_align * GCE(biased).
"""

import math

import torch
import torch.nn.functional as F

from denetdm.checks import flag, number
from denetdm.methods.base import BuildContext, Method
from denetdm.methods.lff import gce
from denetdm.models.experts import Classifier


def table_update(
    table: torch.Tensor, updated: torch.Tensor, y: torch.Tensor, a: torch.Tensor, v: torch.Tensor, alpha: float
) -> None:
    """In place, the reference's per-sample loop at once: for each sample in batch order,
    table[y, a] = alpha * table[y, a] + (1 - alpha * updated[y, a]) * v, then updated[y, a] = 1."""
    c = table.shape[1]
    cell = y * c + a
    order = torch.sort(cell, stable=True).indices
    counts = torch.bincount(cell, minlength=table.numel())
    starts = counts.cumsum(0) - counts
    rank = torch.empty_like(cell)
    rank[order] = torch.arange(len(cell), device=cell.device) - starts[cell[order]]  # earlier samples in its cell
    flat, seen = table.view(-1), updated.view(-1)
    first = torch.where(rank == 0, seen[cell], torch.ones_like(v))  # `updated` as each sample finds it
    later = (counts[cell] - 1 - rank).to(v.dtype)  # how many of its cell's samples come after it
    flat.mul_(alpha ** counts.to(v.dtype)).index_add_(0, cell, alpha**later * (1 - alpha * first) * v)
    seen[cell] = 1


def group_partners(y: torch.Tensor, pseudo: torch.Tensor, key: torch.Tensor, num_classes: int) -> torch.Tensor:
    """For each sample, the index of its mix-up partner: the minority sample (label != pseudo-label) of its class
    at position floor(key * m) among the class's m minority samples in batch order; where a class has none, the
    sample at its own position in the class ordered by key (a random permutation within the class)."""
    n = len(y)
    pos = torch.arange(n, device=y.device)
    minority = y != pseudo
    by_class = torch.sort(y * n + pos).indices  # class blocks, batch order within
    by_key = torch.sort(y.to(key.dtype) * 2 + key).indices  # class blocks, key order within (keys in [0, 1))
    permuted = torch.empty_like(pos)
    permuted[by_class] = by_key
    m = torch.bincount(y[minority], minlength=num_classes)
    listed = torch.sort(torch.where(minority, y * n + pos, num_classes * n + pos)).indices  # minority first
    start = m.cumsum(0) - m
    choice = (key * m[y]).floor().long().clamp(max=(m[y] - 1).clamp(min=0))
    drawn = listed[(start[y] + choice).clamp(max=n - 1)]
    return torch.where(m[y] > 0, drawn, permuted)


class LC(Method):
    """Biased (`biased` head) and debiased (`target` head, the result) networks trained together."""

    heads = ("target", "biased")

    def __init__(
        self,
        biased: Classifier,
        debiased: Classifier,
        labels: torch.Tensor,
        num_classes: int,
        optimizer: torch.optim.Optimizer | None,
        hparams: dict,
    ) -> None:
        super().__init__()
        self.biased, self.debiased, self.optimizer = biased, debiased, optimizer
        self.num_classes, self.hp, self.n = num_classes, hparams, len(labels)
        self.register_buffer("table", torch.zeros(num_classes, num_classes, device=labels.device))
        self.register_buffer("updated", torch.zeros(num_classes, num_classes, device=labels.device))
        self.register_buffer("trained", torch.zeros((), dtype=torch.float64))  # samples stepped on: the ramp-up
        for name in ("mix_key", "lam_key"):  # per sample, this epoch: its partner's draw, its batch's mix ratio
            self.register_buffer(name, torch.zeros(len(labels), device=labels.device))

    @classmethod
    def check(
        cls,
        phase: str,
        schedules: dict,
        q: float,
        tau: float,
        eta: float,
        ema_alpha: float,
        lambda_dis_align: float,
        biased_lr_factor: float,
        rampup_epochs: float,
        normalize_prior: bool,
    ) -> None:
        """0 < q <= 1, tau > 0, eta >= 0, 0 <= ema_alpha <= 1, weights and the ramp-up >= 0, normalize_prior a bool."""
        number("method.q", q, strict=True, high=1.0)
        number("method.tau", tau, strict=True)
        number("method.ema_alpha", ema_alpha, high=1.0)
        for key, value in (("eta", eta), ("lambda_dis_align", lambda_dis_align), ("rampup_epochs", rampup_epochs)):
            number(f"method.{key}", value)
        number("method.biased_lr_factor", biased_lr_factor, strict=True)
        flag("method.normalize_prior", normalize_prior)

    @classmethod
    def build(
        cls,
        ctx: BuildContext,
        previous: Method | None,
        q: float,
        tau: float,
        eta: float,
        ema_alpha: float,
        lambda_dis_align: float,
        biased_lr_factor: float,
        rampup_epochs: float,
        normalize_prior: bool,
    ) -> "LC":
        """Two fresh networks of the target spec (the biased one first), the biased one at its own learning rate."""
        biased = Classifier(ctx.backbone("target"), ctx.num_classes)
        debiased = Classifier(ctx.backbone("target"), ctx.num_classes)
        groups = [{"params": list(debiased.parameters())}]
        groups.append({"params": list(biased.parameters()), "lr": ctx.lr * biased_lr_factor})
        hp = dict(
            q=q, tau=tau, eta=eta, ema_alpha=ema_alpha, lambda_dis_align=lambda_dis_align, rampup_epochs=rampup_epochs
        )
        hp = {k: float(v) for k, v in hp.items()} | {"normalize_prior": normalize_prior}
        return cls(biased, debiased, ctx.train.y, ctx.num_classes, ctx.make_optimizer(groups), hp)

    def epoch_order(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """A shuffle, and for each sample two uniform keys: its mix-up partner's draw and its batch's mix ratio."""
        order = super().epoch_order(n, gen)
        self.mix_key.copy_(torch.rand(n, generator=gen))
        self.lam_key.copy_(torch.rand(n, generator=gen))
        return order

    def ramp(self) -> float:
        """a = 0.5 * exp(-5 (1 - t / rampup)^2), t the epochs trained so far (the reference's sigmoid_rampup)."""
        length = self.hp["rampup_epochs"]
        if length == 0:
            return 0.5
        t = min(self.trained.item() / self.n, length)
        return 0.5 * math.exp(-5.0 * (1.0 - t / length) ** 2)

    @torch.no_grad()
    def priors(self, logit_b: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pseudo-labels of the batch, and each sample's group prior over classes after this batch's update."""
        p = F.softmax(logit_b / self.hp["tau"], dim=1)
        pseudo = p.argmax(1)
        table_update(self.table, self.updated, y, pseudo, p.gather(1, y[:, None]).squeeze(1), self.hp["ema_alpha"])
        table = self.table
        if self.hp["normalize_prior"]:  # a column never visited sums to 0; no sample reads it
            table = table / table.sum(0, keepdim=True).clamp(min=1e-30)
        return pseudo, table[:, pseudo].T

    def update(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        hp, a = self.hp, self.ramp()
        with self.autocast(x):
            logit_b = self.biased(x).float()
        pseudo, prior = self.priors(logit_b, y)
        partner = group_partners(y, pseudo, self.mix_key[idx], self.num_classes)
        lam = 1 - 2 * a + a * self.lam_key[idx[0]]  # U(1 - 2a, 1 - a), one draw per batch
        with self.autocast(x):
            logit_d = self.debiased(lam * x + (1 - lam) * x[partner]).float()
        mixed = lam * prior + (1 - lam) * prior[partner]
        loss_lc = F.cross_entropy(logit_d + torch.log(mixed ** hp["eta"] + 1e-4), y)  # partner's label is y too
        loss_b = gce(logit_b, y, hp["q"]).mean()
        loss = loss_lc + hp["lambda_dis_align"] * loss_b
        self.step(loss)
        self.trained += len(y)
        return {
            "loss": loss.detach(),
            "loss_lc": loss_lc.detach(),
            "loss_biased": loss_b.detach(),
            "minority": (pseudo != y).float().mean(),
        }

    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.autocast(x):
            return {"target": self.debiased(x), "biased": self.biased(x)}
