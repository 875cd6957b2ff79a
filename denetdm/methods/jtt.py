"""Just Train Twice (Liu et al., ICML 2021; docs/protocols.md §8): an identification model (`jtt_id`, plain ERM,
its last epoch kept) finds the training samples it gets wrong; a fresh network is then trained with that error
set upsampled.

As the reference code (anniesch/jtt) does it, by default: the error set is the identification model's
training-mode predictions made while it trained its last epoch (`error_set: online`; the reference's epoch T
counted from 0 is `id_epochs = T + 1` here), and the final training set is the training set plus `upweight`
extra copies of the error set (`weighting: upsample`: each error-set sample counts upweight + 1 times, epochs of
N + upweight * |E| samples, plain mean cross-entropy). Options: `error_set: eval` re-predicts the training set
with the trained identification model in eval mode; `weighting: loss` keeps epochs of N samples and weights each
error-set sample's loss upweight + 1 (normalised by the batch's total weight: the same objective in expectation).
"""

import dataclasses
import logging
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from denetdm.checks import positive_int
from denetdm.errors import ConfigError
from denetdm.methods.base import BuildContext, Method
from denetdm.methods.erm import ERM, check_arch
from denetdm.models.experts import Classifier
from denetdm.selection import protocol

if TYPE_CHECKING:  # phases imports the methods
    from denetdm.training.phases import Schedule

log = logging.getLogger(__name__)

ERROR_SETS = ("online", "eval")
WEIGHTINGS = ("upsample", "loss")


@torch.no_grad()
def errors_of(model: Method, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Boolean mask of the samples that `model`'s `target` head misclassifies (eval mode)."""
    was_training = model.training
    model.eval()
    wrong = torch.cat(
        [
            model.predict(x[i : i + batch_size])["target"].argmax(1) != y[i : i + batch_size]
            for i in range(0, len(y), batch_size)
        ]
    )
    model.train(was_training)
    return wrong


class JTTIdentify(ERM):
    """ERM that remembers, per training sample, whether its training-mode prediction was wrong the last time it
    trained on it (after its last epoch: the reference's error set)."""

    stackable = False  # its update also records the error set

    def __init__(self, model: Classifier, optimizer: torch.optim.Optimizer | None, n: int) -> None:
        super().__init__(model, optimizer)
        self.register_buffer("wrong", torch.zeros(n, dtype=torch.bool))

    @classmethod
    def check(cls, phase: str, schedules: dict, arch: str, id_epochs: int) -> None:
        """`arch` names a model spec (`id_epochs` is checked with the schedule)."""
        check_arch(arch)

    @classmethod
    def schedule(cls, base: "Schedule", arch: str, id_epochs: int) -> "Schedule":
        """The target's schedule for `id_epochs` epochs, its last epoch kept (JTT selects nothing here)."""
        positive_int("method.id_epochs", id_epochs)
        return dataclasses.replace(base, epochs=id_epochs, selection=protocol("last"))

    @classmethod
    def build(cls, ctx: BuildContext, previous: Method | None, arch: str, id_epochs: int) -> "JTTIdentify":
        """A fresh network of the `arch` spec (`id_epochs` sets its schedule)."""
        model = Classifier(ctx.backbone(arch), ctx.num_classes)
        return cls(model, ctx.make_optimizer(model.parameters()), len(ctx.train))

    def update(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.autocast(x):
            logits = self.model(x).float()
        loss = F.cross_entropy(logits, y)
        self.wrong[idx] = logits.detach().argmax(1) != y
        self.step(loss)
        return {"loss": loss.detach()}


class JTT(ERM):
    """The final training: a fresh network on the training set with the error set upsampled (or upweighted)."""

    stackable = False  # its members' epochs differ in length (each upsamples its own error set): not vmapped

    def __init__(
        self,
        model: Classifier,
        optimizer: torch.optim.Optimizer | None,
        wrong: torch.Tensor,
        upweight: int,
        weighting: str,
    ) -> None:
        super().__init__(model, optimizer)
        extra = upweight if weighting == "loss" else 0
        self.register_buffer("weights", 1.0 + extra * wrong.float())
        errors = wrong.nonzero().flatten().cpu()
        # upsample: the training set, then `upweight` copies of the error set (ConcatDataset in the reference)
        self.pool = torch.cat([torch.arange(len(wrong)), errors.repeat(upweight)]) if weighting == "upsample" else None

    @classmethod
    def check(
        cls,
        phase: str,
        schedules: dict,
        arch: str,
        upweight: int,
        weighting: str,
        error_set: str,
    ) -> None:
        """`upweight` a positive integer, known options, and the identification phase shorter than this one."""
        check_arch(arch)
        positive_int("method.upweight", upweight)
        for key, value, allowed in (("weighting", weighting, WEIGHTINGS), ("error_set", error_set, ERROR_SETS)):
            if value not in allowed:
                raise ConfigError(f"method.{key} must be one of {', '.join(allowed)}, got {value!r}")
        names = list(schedules)
        first = schedules[names[names.index(phase) - 1]]
        if first.epochs >= schedules[phase].epochs:
            raise ConfigError(
                f"jtt: method.id_epochs ({first.epochs}) must be below the epochs of the final training "
                f"({schedules[phase].epochs}); the identification model is trained briefly, then the final one"
            )

    @classmethod
    def build(
        cls,
        ctx: BuildContext,
        previous: Method | None,
        arch,
        upweight,
        weighting,
        error_set,
    ) -> "JTT":
        """The error set of `previous` (the identification phase), then a fresh network."""
        if not isinstance(previous, JTTIdentify):
            raise TypeError("JTT's final phase follows its identification phase (JTTIdentify)")
        wrong = previous.wrong.clone() if error_set == "online" else errors_of(previous, ctx.train.x, ctx.train.y)
        conflicting = ctx.train.y != ctx.train.b  # only to report how well the error set finds them
        log.info(
            "jtt: error set of %d training samples (%.1f %% of them bias-conflicting; %d conflicting in all)",
            int(wrong.sum()),
            100 * float(conflicting[wrong].float().mean()) if wrong.any() else 0.0,
            int(conflicting.sum()),
        )
        model = Classifier(ctx.backbone(arch), ctx.num_classes)
        return cls(model, ctx.make_optimizer(model.parameters()), wrong, upweight, weighting)

    def epoch_order(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """`upsample`: a shuffle of the training set with the error set's copies; `loss`: of the training set."""
        if self.pool is None:
            return super().epoch_order(n, gen)
        return self.pool[torch.randperm(len(self.pool), generator=gen)]

    def loss(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        w = self.weights[idx]
        return {"loss": (w * self.losses(x, y)).sum() / w.sum()}
