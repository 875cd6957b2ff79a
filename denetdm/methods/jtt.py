"""Just Train Twice (Liu et al., ICML 2021; docs/protocols.md §8): an ERM phase (`jtt_id`, its last epoch kept)
finds the training samples it gets wrong; a fresh network is then trained with their loss upweighted."""

import logging

import torch

from denetdm.checks import number
from denetdm.errors import ConfigError
from denetdm.methods.base import BuildContext, Method
from denetdm.methods.erm import ERM, check_arch
from denetdm.models.experts import Classifier

log = logging.getLogger(__name__)


@torch.no_grad()
def error_set(model: Method, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Boolean mask of the samples that `model`'s `target` head misclassifies."""
    was_training = model.training
    model.eval()
    wrong = torch.cat([model.predict(x[i : i + batch_size])["target"].argmax(1) != y[i : i + batch_size]
                       for i in range(0, len(y), batch_size)])  # fmt: skip
    model.train(was_training)
    return wrong


class JTT(ERM):
    """The second phase: cross-entropy with each error-set sample's loss weighted by `upweight` (the others 1),
    normalised by the batch's total weight (in expectation the same objective as upsampling the error set)."""

    def __init__(self, model: Classifier, optimizer: torch.optim.Optimizer | None, weights: torch.Tensor) -> None:
        super().__init__(model, optimizer)
        self.register_buffer("weights", weights)

    @classmethod
    def check(cls, phase: str, schedules: dict, arch: str = "target", upweight: float = 50.0) -> None:
        """`upweight` >= 1, and the identification phase shorter than this one."""
        check_arch(arch)
        number("method.upweight", upweight, low=1.0)
        names = list(schedules)
        first = schedules[names[names.index(phase) - 1]]
        if first.epochs >= schedules[phase].epochs:
            raise ConfigError(
                f"jtt: method.id_epochs ({first.epochs}) must be below the epochs of the final training "
                f"({schedules[phase].epochs}); the identification model is trained briefly, then the final one"
            )

    @classmethod
    def build(cls, ctx: BuildContext, previous: Method | None = None, arch="target", upweight=50.0) -> "JTT":
        """The error set of `previous` on the training split, then a fresh network."""
        if previous is None:
            raise TypeError("JTT's final phase follows its identification phase")
        wrong = error_set(previous, ctx.train.x, ctx.train.y)
        conflicting = ctx.train.y != ctx.train.b  # only to report how well the error set finds them
        log.info("jtt: error set of %d training samples (%.1f %% of them bias-conflicting; %d conflicting in all)",
                 int(wrong.sum()), 100 * float(conflicting[wrong].float().mean()) if wrong.any() else 0.0,
                 int(conflicting.sum()))  # fmt: skip
        weights = 1.0 + (float(upweight) - 1.0) * wrong.float()
        model = Classifier(ctx.backbone(arch), ctx.num_classes)
        return cls(model, ctx.make_optimizer(model.parameters()), weights)

    def update(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        w = self.weights[idx]
        loss = (w * self.losses(x, y)).sum() / w.sum()
        self.step(loss)
        return {"loss": loss.detach()}
