"""Group DRO (Sagawa et al., ICLR 2020; docs/protocols.md §8) over the (class, bias) cells. It trains with
bias labels (`uses_bias_labels: true` in conf/method/groupdro.yaml), unlike every other method here.

Online algorithm of the reference: keep weights q over the groups (uniform at first); each step
q_g <- q_g * exp(eta * (loss_g + C / sqrt(n_g))), renormalise, and minimise sum_g q_g * loss_g, where loss_g is
the mean loss of group g in the batch (0 when absent) and n_g its training count (C = `adjustment`, default 0).

Batches: every published Group DRO command passes `--reweight_groups`, so the reference draws each epoch's N
samples with replacement, sample i with weight N / n_g(i) (groups equally likely): `sampler: balanced`, the
default. `sampler: shuffle` is a plain shuffle, where most batches hold no sample of a rare group.
"""

import torch

from denetdm.checks import number
from denetdm.errors import ConfigError
from denetdm.methods.base import BuildContext, Method
from denetdm.methods.erm import ERM, check_arch
from denetdm.models.experts import Classifier

SAMPLERS = ("balanced", "shuffle")


class GroupDRO(ERM):
    """A network of the `arch` spec trained on the worst-weighted mixture of group losses."""

    stackable = False  # its update also moves the group weights

    def __init__(
        self,
        model: Classifier,
        optimizer: torch.optim.Optimizer | None,
        groups: torch.Tensor,
        num_groups: int,
        eta: float,
        adjustment: float,
        sampler: str,
    ) -> None:
        super().__init__(model, optimizer)
        self.eta, self.num_groups = float(eta), num_groups
        counts = torch.bincount(groups, minlength=num_groups).float()
        # the reference's `--reweight_groups`: sample i drawn with weight N / n_g(i), in float32 as its code has it
        balanced = (len(groups) / counts.clamp(min=1))[groups].cpu().double()
        self.draw_weights = balanced if sampler == "balanced" else None  # on the host, like the generator
        self.register_buffer("groups", groups.clone())
        self.register_buffer("adjust", float(adjustment) / counts.clamp(min=1).sqrt())
        self.register_buffer("q", torch.full((num_groups,), 1.0 / num_groups, device=groups.device))

    @classmethod
    def check(
        cls,
        phase: str,
        schedules: dict,
        arch: str,
        eta: float,
        adjustment: float,
        sampler: str,
    ) -> None:
        """`eta` > 0, `adjustment` >= 0, a known sampler."""
        check_arch(arch)
        number("method.eta", eta, strict=True)
        number("method.adjustment", adjustment)
        if sampler not in SAMPLERS:
            raise ConfigError(f"method.sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")

    @classmethod
    def build(
        cls,
        ctx: BuildContext,
        previous: Method | None,
        arch,
        eta,
        adjustment,
        sampler,
    ) -> "GroupDRO":
        """A fresh network; groups from the training split's class and bias labels."""
        model = Classifier(ctx.backbone(arch), ctx.num_classes)
        groups = ctx.train.y * ctx.num_biases + ctx.train.b
        num_groups = ctx.num_classes * ctx.num_biases
        return cls(model, ctx.make_optimizer(model.parameters()), groups, num_groups, eta, adjustment, sampler)

    def epoch_order(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """`balanced`: n draws with replacement, groups equally likely; `shuffle`: a plain shuffle."""
        if self.draw_weights is None:
            return super().epoch_order(n, gen)
        return torch.multinomial(self.draw_weights, n, replacement=True, generator=gen)

    def group_losses(self, losses: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Mean loss of each group in the batch (0 for the groups it lacks)."""
        g = self.groups[idx]
        total = torch.zeros(self.num_groups, device=losses.device).index_add(0, g, losses)
        count = torch.zeros(self.num_groups, device=losses.device).index_add(0, g, torch.ones_like(losses))
        return total / count.clamp(min=1)

    def update(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        group_loss = self.group_losses(self.losses(x, y), idx)
        with torch.no_grad():
            q = self.q * torch.exp(self.eta * (group_loss + self.adjust))
            self.q.copy_(q / q.sum())
        loss = group_loss @ self.q
        self.step(loss)
        return {"loss": loss.detach(), "q_max": self.q.max()}
