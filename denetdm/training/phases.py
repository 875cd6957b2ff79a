"""A method's phases from its config (conf/method/<name>.yaml): classes, hyperparameters, schedules, and
building them, freshly or as the skeleton of a checkpoint."""

import inspect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from hydra.utils import get_class

from denetdm.checks import number, positive_int
from denetdm.errors import ConfigError
from denetdm.methods.base import BuildContext, Method
from denetdm.metrics import METRICS
from denetdm.selection import Protocol

PHASE_KEYS = ("_target_", "schedule")  # a phase node names its class and its schedule node, nothing else
# a method node's keys that are not hyperparameters: how it is named and shown, which model it delivers, its phases
METHOD_KEYS = ("name", "label", "uses_bias_labels", "row_depths", "final", "phases", "unread")
SCHEDULE_KEYS = ("epochs", "batch_size", "select", "drop_last")


LR_SCHEDULES = ("none", "step", "cosine")
LR_KEYS = ("name", "warmup_epochs", "delay_epochs", "step_epochs", "gamma")


@dataclass(frozen=True)
class LRSchedule:
    """How a phase's learning rate moves, step by step: a linear warm-up from lr/steps to lr over `warmup_epochs`,
    then `delay_epochs` at lr, then none (constant), step (times `gamma` every `step_epochs`) or cosine (to 0 at the
    last step). Epochs may be fractions (a schedule of optimiser steps: 10,000 steps of 100 per epoch are 100
    epochs). The learning rate of every step follows from its place in the schedule alone, so a resumed run
    continues it exactly."""

    name: str = "none"
    warmup_epochs: float = 0.0
    delay_epochs: float = 0.0  # DFA's decay counts its steps from its swap's start
    step_epochs: float = 1.0
    gamma: float = 0.1

    @property
    def varies(self) -> bool:
        """Whether the learning rate ever differs from the configured one."""
        return self.name != "none" or self.warmup_epochs > 0

    def factor(self, t: float, batch: float, epochs: int) -> float:
        """The learning rate's multiplier for the step that starts at `t` epochs into the phase (each step `batch`
        epochs long) of `epochs`."""
        if t < self.warmup_epochs:
            return min(1.0, (t + batch) / self.warmup_epochs)
        t -= self.warmup_epochs + self.delay_epochs
        if t < 0:
            return 1.0
        if self.name == "step":
            return self.gamma ** math.floor(t / self.step_epochs + 1e-9)  # exact at the boundaries
        if self.name == "cosine":
            return 0.5 * (1 + math.cos(math.pi * t / (epochs - self.warmup_epochs - self.delay_epochs)))
        return 1.0

    @classmethod
    def parse(cls, source: str, node: object, epochs: int) -> "LRSchedule":
        """`<source>.lr_schedule` checked (absent or null: none); one error naming the key otherwise."""
        key = f"{source}.lr_schedule"
        if node is None:
            return cls()
        if not isinstance(node, Mapping) or set(node) - set(LR_KEYS):
            raise ConfigError(f"{key} must be a mapping of {', '.join(LR_KEYS)}, got {node!r}")
        out = cls(**{k: node[k] for k in LR_KEYS if node.get(k) is not None})
        if out.name not in LR_SCHEDULES:
            raise ConfigError(f"{key}.name must be one of {', '.join(LR_SCHEDULES)}, got {out.name!r}")
        number(f"{key}.warmup_epochs", out.warmup_epochs, high=epochs)
        number(f"{key}.delay_epochs", out.delay_epochs)  # past the last epoch: no decay in this run
        number(f"{key}.step_epochs", out.step_epochs, strict=True)
        number(f"{key}.gamma", out.gamma, strict=True, high=1.0)
        if out.name == "cosine" and out.warmup_epochs + out.delay_epochs >= epochs:
            raise ConfigError(
                f"{key}.warmup_epochs + delay_epochs must be below {source}.epochs={epochs} for a cosine schedule"
            )
        return out


@dataclass(frozen=True)
class Schedule:
    """How one phase trains: epochs, batch size, the `<head>/<metric>` that selection maximises, batch-order seed,
    a selection protocol of its own (None: the run's), the last partial batch dropped or not, the optimiser's
    learning rate and weight decay."""

    epochs: int
    batch_size: int
    select: str
    seed: int
    selection: Protocol | None = None
    drop_last: bool = False  # drop the last partial training batch of each epoch (the reference's stage 1 does)
    lr: float = 0.0
    weight_decay: float = 0.0
    source: str = "target"  # the config node it comes from (`experts`, `target`): what error messages name
    lr_schedule: LRSchedule = LRSchedule()

    def check(self) -> "Schedule":
        """Raise a ConfigError naming `<source>.<key>` for a value torch would reject or misuse."""
        stage = self.source
        for name in ("epochs", "batch_size"):
            positive_int(f"{stage}.{name}", getattr(self, name))
        if not isinstance(self.drop_last, bool):
            raise ConfigError(f"{stage}.drop_last must be true or false, got {self.drop_last!r}")
        if not isinstance(self.select, str) or self.select.count("/") != 1:
            raise ConfigError(
                f"{stage}.select must be <head>/<metric> (e.g. shallow/acc_conflicting), got {self.select!r}"
            )
        if (metric := self.select.split("/")[1]) not in METRICS:
            raise ConfigError(f"{stage}.select={self.select}: no metric {metric!r}; one of: {', '.join(METRICS)}")
        return self


def phases(method: Mapping) -> dict[str, Mapping]:
    """The method's phases in order (a preset drops one by setting it to null)."""
    nodes = method.get("phases") or {}
    out = {name: node for name, node in nodes.items() if node is not None}
    if not out:
        raise ConfigError(f"method {method.get('name')!r} has no phases; see conf/method/")
    return out


def phase_class(name: str, node: Mapping) -> type[Method]:
    """The Method class of a phase (`_target_`)."""
    target = node.get("_target_")
    try:
        cls = get_class(str(target))
    except Exception:
        raise ConfigError(f"method.phases.{name}._target_={target!r} is not an importable class") from None
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ConfigError(f"method.phases.{name}._target_={target!r} is not a denetdm Method")
    return cls


def takes(cls: type[Method]) -> tuple[str, ...]:
    """The hyperparameters a phase class declares: the keyword parameters of its `build`."""
    params = inspect.signature(cls.build).parameters.values()
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(p.name for p in params if p.name not in ("ctx", "previous") and p.kind in named)


def resolve(method: Mapping) -> dict:
    """The method node with each hyperparameter (a method-level key, written once in its yaml) moved into the
    nodes of the phases whose class takes it, so that a phase node is complete (a checkpoint rebuilds from it). A
    key set to null is absent (a preset that drops a phase drops its hyperparameters)."""
    out = {k: v for k, v in method.items() if k in METHOD_KEYS}
    given = {k: v for k, v in method.items() if k not in METHOD_KEYS and v is not None}
    out["phases"], used = dict(method.get("phases") or {}), set()
    for name, node in phases(method).items():
        extra = sorted(set(node) - set(PHASE_KEYS))
        if extra:
            raise ConfigError(
                f"method.phases.{name} holds {extra}: a phase names only _target_ and schedule; set hyperparameters "
                f"once, at the method level (method.{extra[0]}=...)"
            )
        names = takes(phase_class(name, node))
        missing = [k for k in names if k not in given]
        if missing:
            raise ConfigError(f"method.{missing[0]} is not set; phase {name} needs it (conf/method/)")
        out["phases"][name] = {**node, **{k: given[k] for k in names}}
        used.update(names)
    unused = sorted(set(given) - used)
    if unused:
        raise ConfigError(
            f"method.{unused[0]} is not a hyperparameter of method {method.get('name')!r} (its phases take: "
            f"{', '.join(sorted(used)) or 'none'}); see conf/method/"
        )
    return out


def hparams(node: Mapping) -> dict[str, Any]:
    """A resolved phase node's hyperparameters: every key but its class and schedule."""
    return {k: v for k, v in node.items() if k not in PHASE_KEYS}


@dataclass(frozen=True)
class Phase:
    """One phase of a method, resolved once: its class, schedule and hyperparameters."""

    name: str
    cls: type[Method]
    schedule: Schedule | None  # None: a checkpoint's phase, rebuilt to load its state, not trained
    hparams: dict

    def build(self, ctx: BuildContext, previous: Method | None) -> Method:
        """The phase's method, fresh, after the previous phase's (`previous`)."""
        try:
            return self.cls.build(ctx, previous, **self.hparams)
        except TypeError as e:
            raise ConfigError(f"method.phases.{self.name}: {e}".replace("build()", "the phase")) from None


def _schedule(cfg: Mapping, name: str, node: Mapping, cls: type[Method], seed: int) -> Schedule:
    """The phase's schedule: the top-level node it names (`schedule: target`), as its class adapts it."""
    source = node.get("schedule")
    if not isinstance(cfg.get(source) if isinstance(source, str) else None, Mapping):
        raise ConfigError(f"method.phases.{name}.schedule must name a schedule node such as target, got {source!r}")
    values = {k: cfg[source].get(k) for k in SCHEDULE_KEYS}
    lr, decay = cfg[source].get("lr"), cfg[source].get("weight_decay")
    base = Schedule(**values, seed=seed, lr=lr, weight_decay=decay, source=source).check()
    base = replace(base, lr_schedule=LRSchedule.parse(source, cfg[source].get("lr_schedule"), base.epochs))
    if (head := base.select.split("/")[0]) not in cls.heads:
        raise ConfigError(
            f"{source}.select={base.select}: {name} has no head {head!r}; its heads: {', '.join(cls.heads)}"
        )
    return cls.schedule(base, **hparams(node))


def plan_phases(cfg: Mapping, method: Mapping, seeds: Mapping[str, int]) -> dict[str, Phase]:
    """Every phase of a resolved method node with its class, checked schedule (batch order from `seeds[name]`)
    and hyperparameters, each phase's values checked against all the schedules, before anything is loaded."""
    nodes = phases(method)
    classes = {name: phase_class(name, node) for name, node in nodes.items()}
    schedules = {name: _schedule(cfg, name, node, classes[name], seeds[name]) for name, node in nodes.items()}
    for name, node in nodes.items():
        try:
            classes[name].check(name, schedules, **hparams(node))
        except TypeError as e:
            raise ConfigError(f"method.phases.{name}: {e}".replace("check()", "the phase")) from None
    return {name: Phase(name, classes[name], schedules[name], hparams(nodes[name])) for name in nodes}


def rebuild(method: Mapping, upto: str, ctx: BuildContext) -> Method:
    """The modules of a checkpoint's phase `upto` of a method node, ready for its state (`skeleton`)."""
    built = skeleton(
        [Phase(n, phase_class(n, node), None, hparams(node)) for n, node in phases(method).items()], upto, ctx
    )
    if built is None:
        raise ConfigError(f"the checkpoint's phase {upto!r} is not a phase of method {method.get('name')!r}")
    return built


def skeleton(planned: Iterable[Phase], upto: str, ctx: BuildContext) -> Method | None:
    """Phase `upto` with the phases before it, which it may wrap, built in order without optimisers (None: no
    such phase)."""
    previous = None
    for phase in planned:
        previous = phase.build(ctx, previous)
        if phase.name == upto:
            return previous
    return None
