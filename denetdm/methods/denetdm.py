"""DeNetDM's two stages as methods (docs/protocols.md §1)."""

import logging
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from denetdm.checks import number
from denetdm.data.splits import Split
from denetdm.errors import ConfigError
from denetdm.methods.base import BuildContext, Method, OptimizerFactory
from denetdm.models.experts import TargetModel, TwoExpertModel
from denetdm.verdict import collapse_verdict

log = logging.getLogger(__name__)


class DeNetDMStage1(Method):
    """Stage 1: deep and shallow experts trained jointly as a product of experts with plain cross-entropy."""

    stackable = capturable = True

    heads = ("shallow", "deep", "poe")

    def __init__(
        self, model: TwoExpertModel, optimizer: OptimizerFactory | None, lr: float, weight_decay: float
    ) -> None:
        super().__init__()
        self.model = model
        if optimizer is not None:
            self.optimizer = optimizer(model.parameters(), lr=lr, weight_decay=weight_decay)

    @classmethod
    def build(cls, ctx: BuildContext, previous: Method | None) -> "DeNetDMStage1":
        """Deep and shallow experts of the specs with a shared head (the deep one is built first)."""
        model = TwoExpertModel(ctx.backbone("deep"), ctx.backbone("shallow"), ctx.num_classes)
        return cls(model, ctx.optimizer, lr=ctx.lr, weight_decay=ctx.weight_decay)

    def loss(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.autocast(x):
            return {"loss": F.cross_entropy(self.model(x), y)}

    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.autocast(x):
            return self.model.experts(x)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        deep, shallow = self.model.features(x)
        return {"shallow": shallow, "deep": deep}

    def diagnose(self, phase: str, metrics: Mapping[str, float], epochs: int) -> dict:
        """How far the experts split (`<phase>/separation`: validation conflicting accuracy, shallow minus deep),
        and `<phase>/collapsed` with its signal, read without any label (denetdm.verdict), with a warning when
        the deep expert collapsed."""
        split = [metrics.get(f"{phase}/{h}/val/acc_conflicting") for h in ("shallow", "deep")]
        out = {f"{phase}/separation": split[0] - split[1]} if all(isinstance(v, float) for v in split) else {}
        deep, shallow = (metrics.get(f"{phase}/{h}/val/pred_entropy") for h in ("deep", "shallow"))
        if deep is None or shallow is None:
            return out
        out |= collapse_verdict(deep, shallow, epochs, phase)
        if out[f"{phase}/collapsed"] is None:
            log.info("%s: %s (%s/collapsed is null)", phase, out[f"{phase}/collapse_note"], phase)
        if out[f"{phase}/collapsed"]:
            out["warnings"] = [
                f"{phase}: the deep expert predicts few classes (pred_entropy {deep:.2f} on val against the "
                f"shallow expert's {shallow:.2f}): it has likely collapsed and left the bias to the shallow expert, "
                "so the target will not be debiased; try other seeds or a remedy (docs/results.md, the depth pairs)"
            ]
        return out


class DeNetDMStage2(Method):
    """Stage 2: a target model in a product of experts with the frozen deep expert, distilled from the
    frozen shallow expert: poe_weight * CE(f_t(phi_b + phi_t), y) + dist_weight * T^2 * KD_T(shallow -> target).
    """

    stackable = capturable = True

    stack_apart = ("poe_weight", "dist_weight", "temperature")

    def __init__(
        self,
        stage1: TwoExpertModel,
        target: TargetModel,
        optimizer: OptimizerFactory | None,
        lr: float,
        weight_decay: float,
        poe_weight: float,
        dist_weight: float,
        temperature: float,
        frozen_bn: str,
    ) -> None:
        super().__init__()
        self.stage1 = stage1.requires_grad_(False).eval()
        self.target = target
        # buffers, not attributes, so each member of a stack has its own (stack_apart; not in the state dict)
        for name, value in (("poe_weight", poe_weight), ("dist_weight", dist_weight), ("temperature", temperature)):
            self.register_buffer(name, torch.tensor(float(value)), persistent=False)
        self.frozen_bn = frozen_bn
        self.register_buffer("frozen_deep", None, persistent=False)  # the frozen experts' outputs (prepare)
        self.register_buffer("frozen_teacher", None, persistent=False)
        if optimizer is not None:  # only the target extractor and its head are optimised
            self.optimizer = optimizer(target.parameters(), lr=lr, weight_decay=weight_decay)

    @classmethod
    def check(cls, phase: str, schedules: dict, poe_weight, dist_weight, temperature, frozen_bn) -> None:
        """The loss weights are numbers >= 0, the temperature > 0, frozen_bn eval or train."""
        number("method.poe_weight", poe_weight)
        number("method.dist_weight", dist_weight)
        number("method.temperature", temperature, strict=True)
        if frozen_bn not in ("eval", "train"):
            raise ConfigError(f"method.frozen_bn must be eval or train, got {frozen_bn!r}")

    @classmethod
    def build(
        cls,
        ctx: BuildContext,
        previous: Method | None,
        poe_weight: float,
        dist_weight: float,
        temperature: float,
        frozen_bn: str,
    ) -> "DeNetDMStage2":
        """A fresh target of the target spec next to the stage-1 experts of `previous`, its head copied."""
        if not isinstance(previous, DeNetDMStage1):
            raise TypeError("DeNetDM's stage 2 follows its stage 1")
        target = TargetModel(ctx.backbone("target"), previous.model.head)
        weights = {"poe_weight": poe_weight, "dist_weight": dist_weight, "temperature": temperature}
        return cls(previous.model, target, ctx.optimizer, ctx.lr, ctx.weight_decay, **weights, frozen_bn=frozen_bn)

    def train(self, mode: bool = True) -> "DeNetDMStage2":
        super().train(mode)
        self.stage1.eval()  # frozen experts keep their BatchNorm statistics (the paper's frozen expert) ...
        if mode and self.frozen_bn == "train":
            # ... unless asked to do what the reference code does: its model.train() also puts the frozen deep
            # expert in train mode, so it normalises with batch statistics and its running ones drift.
            self.stage1.deep.train()
            self.stage1.deep_proj.train()
        return self

    @torch.no_grad()
    def _frozen_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast(x):
            deep, shallow = self.stage1.features(x)
            return deep.float(), self.stage1.head(shallow).float()

    @torch.no_grad()
    def prepare(self, train: Split, augmented: bool) -> None:
        # Without augmentation, the frozen experts see the same inputs every epoch: compute their outputs
        # once instead of once per epoch (this is most of the stage-2 cost on Colored MNIST).
        self.frozen_deep = self.frozen_teacher = None
        if not augmented and self.frozen_bn == "eval":  # batch statistics make them depend on the batch
            outs = [self._frozen_outputs(x) for x, _, _ in train.batches(4096)]
            self.frozen_deep, self.frozen_teacher = (torch.cat([o[i] for o in outs]) for i in (0, 1))

    def loss(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.frozen_deep is not None:
            deep, teacher = self.frozen_deep[idx], self.frozen_teacher[idx]
        else:
            deep, teacher = self._frozen_outputs(x)
        with self.autocast(x):
            feat = self.target.features(x)
            poe = F.cross_entropy(self.target.head(deep + feat), y)
            t = self.temperature
            student = F.log_softmax(self.target.head(feat).float() / t, dim=1)
            dist = -(F.softmax(teacher / t, dim=1) * student).sum() / len(y) * t * t
            loss = self.poe_weight * poe + self.dist_weight * dist
        return {"loss": loss, "loss_poe": poe, "loss_dist": dist}

    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.autocast(x):
            return {"target": self.target(x)}

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"target": self.target.features(x)}
