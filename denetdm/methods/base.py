"""The method interface: the training loop knows nothing else about a method (DomainBed style).

A method runs as one or more phases (DeNetDM: stage1, stage2; JTT: jtt_id, jtt). Each phase is a `Method`
class that `build`s itself from a `BuildContext` and the previous phase's trained method, and `check`s its
hyperparameters before anything is loaded or trained. conf/method/<name>.yaml lists the phases and sets each
hyperparameter once, at the method level; a phase receives those its `build` names as keyword parameters.
"""

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from denetdm.data.splits import Split
from denetdm.models import build_backbone

OptimizerFactory = Callable[..., torch.optim.Optimizer]
PARTS = ("shallow", "deep", "target")


@dataclass
class BuildContext:
    """What a phase is built from: input shape, classes and biases, the model specs, the training split (for
    per-sample state) and the phase's optimizer with its learning rate and weight decay."""

    input_shape: tuple[int, ...]
    num_classes: int
    num_biases: int
    specs: Mapping[str, Mapping]
    train: Split
    optimizer: OptimizerFactory | None = None
    lr: float = 0.0
    weight_decay: float = 0.0

    def backbone(self, part: str) -> nn.Module:
        """A fresh feature extractor of the `part` spec (shallow, deep or target)."""
        return build_backbone(self.specs[part], self.input_shape)

    def make_optimizer(self, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer | None:
        """The phase's optimizer over `params` (None when only rebuilding a checkpoint's modules)."""
        if self.optimizer is None:
            return None
        return self.optimizer(params, lr=self.lr, weight_decay=self.weight_decay)


class Method(nn.Module):
    """A trainable method: `update` takes one step on a batch, `predict` returns logits per readout head.

    What the loop may do with it, declared by each class (both off unless it says so):
    - `stackable`: members of a stack (`launcher=stacked`) may be vmapped, because a step is `loss` plus the
      optimiser's step (no `update` of its own); the hyperparameters that `stack_apart` names may differ between
      a stack's members, so they must live in buffers (vmap gives each member its own), not in Python attributes;
    - `views`: what `x` a step gets where the dataset augments (denetdm.data.augment.views): 0, the stored
      images; 1, one augmented view (the default); 2, a pair `(x1, x2)` of views augmented independently (a
      method with two views is neither stacked nor captured);
    - `capturable`: on CUDA (`captured=auto`) its step may be recorded once as a CUDA graph and replayed. A
      captured step must not draw host-side random numbers or change Python state per step (a counter, a list):
      the replay repeats what was recorded. Per-epoch randomness belongs in `epoch_order`, per-sample state in
      device tensors updated in place.
    """

    optimizer: torch.optim.Optimizer | None = None
    amp: bool = False  # bf16 autocast on CUDA
    stackable: bool = False
    capturable: bool = False
    views: int = 1
    stack_apart: tuple[str, ...] = ()
    heads: tuple[str, ...] = ("target",)  # the keys of `predict`, which `<schedule>.select` may name

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.stackable and (cls.loss is Method.loss or cls.update is not Method.update):
            raise TypeError(f"{cls.__name__} declares stackable, but its step is not its `loss` and the optimiser's")
        if cls.views not in (0, 1, 2) or (cls.views == 2 and (cls.stackable or cls.capturable)):
            raise TypeError(f"{cls.__name__}.views must be 0, 1 or 2 (2: neither stackable nor capturable)")

    @classmethod
    def check(cls, phase: str, schedules: Mapping[str, Any], **hparams: Any) -> None:
        """Raise a ConfigError for a hyperparameter of the wrong type or value (before any data is loaded);
        `schedules` are every phase's Schedule, by phase name."""

    @classmethod
    def schedule(cls, base: Any, **hparams: Any) -> Any:
        """The phase's Schedule, from the schedule node it names (`base`); a phase may adapt it (JTT's
        identification model trains its own number of epochs)."""
        return base

    @classmethod
    def build(cls, ctx: BuildContext, previous: "Method | None", **hparams: Any) -> "Method":
        """The phase's method, from the context and the previous phase's trained method (None for the first)."""
        raise NotImplementedError

    def autocast(self, x: torch.Tensor) -> torch.autocast:
        """bf16 autocast where asked for and the batch is on CUDA; a no-op elsewhere."""
        on = self.amp and x.is_cuda
        # a CUDA graph must not hold autocast's cached weight casts (PyTorch's graph notes)
        cache = not (on and torch.cuda.is_current_stream_capturing())
        return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=on, cache_enabled=cache)

    def step(self, loss: torch.Tensor) -> None:
        """One optimiser step on `loss`."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def epoch_order(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """The training samples of one epoch, in order, as host indices drawn from `gen`: a shuffle of the `n`
        samples, unless the method samples otherwise (Group DRO's balanced groups, JTT's upsampled error set)."""
        return torch.randperm(n, generator=gen)

    def prepare(self, train: Split, augmented: bool) -> None:
        """Called once before training on `train` (e.g. to precompute outputs of frozen parts)."""

    def loss(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The batch's scalar losses, `loss` the one optimised, without a step. A method whose step is this
        (no per-sample state changed in place) can train stacked with others (`launcher=stacked`)."""
        raise NotImplementedError

    def update(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimisation step; returns detached scalar losses (tensors, so the loop never syncs)."""
        losses = self.loss(x, y, idx)
        self.step(losses["loss"])
        return {k: v.detach() for k, v in losses.items()}

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None, idx: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """What torch.func.functional_call runs for a stack of members: `loss` of a batch, or `predict` of x."""
        return self.predict(x) if y is None else self.loss(x, y, idx)

    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every readout head, by head name (the names the metrics are recorded under)."""
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Penultimate features by head name, for linear probes (`probe.every`); none by default."""
        return {}

    def diagnose(self, phase: str, metrics: Mapping[str, float], epochs: int) -> dict:
        """Verdicts on the trained phase (`epochs` long), from its selected epoch's metrics: results.json entries,
        `warnings` among them a list of lines that are also logged; none by default."""
        return {}
