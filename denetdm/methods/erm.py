"""ERM: one network trained with plain cross-entropy (LfF's "vanilla"), and the phases built on it."""

import torch
import torch.nn.functional as F

from denetdm.errors import ConfigError
from denetdm.methods.base import PARTS, BuildContext, Method
from denetdm.models.experts import Classifier


def check_arch(arch: object) -> str:
    """Which model spec a single-network method trains: shallow, deep or target."""
    if arch not in PARTS:
        raise ConfigError(f"method.arch must be one of {', '.join(PARTS)}, got {arch!r}")
    return arch


class ERM(Method):
    """A network of the `arch` spec (default: the target's), cross-entropy; its head is `target`."""

    stackable = capturable = True

    def __init__(self, model: Classifier, optimizer: torch.optim.Optimizer | None = None) -> None:
        super().__init__()
        self.model = model
        self.optimizer = optimizer

    @classmethod
    def check(cls, phase: str, schedules: dict, arch: str) -> None:
        """`arch` names a model spec."""
        check_arch(arch)

    @classmethod
    def build(cls, ctx: BuildContext, previous: Method | None, arch: str) -> "ERM":
        """A fresh network of the `arch` spec."""
        model = Classifier(ctx.backbone(arch), ctx.num_classes)
        return cls(model, ctx.make_optimizer(model.parameters()))

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample cross-entropy (float32 under autocast)."""
        with self.autocast(x):
            return F.cross_entropy(self.model(x).float(), y, reduction="none")

    def loss(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": self.losses(x, y).mean()}

    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.autocast(x):
            return {"target": self.model(x)}

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"target": self.model.extractor(x)}
