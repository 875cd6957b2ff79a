"""A method's phases from its config (conf/method/<name>.yaml): classes, hyperparameters, schedules, and
building them, freshly or as the skeleton of a checkpoint."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hydra.utils import get_class

from denetdm.checks import positive_int
from denetdm.errors import ConfigError
from denetdm.methods.base import BuildContext, Method
from denetdm.training.selection import Protocol, protocol

RESERVED = ("_target_", "schedule", "schedule_overrides")  # phase keys that are not hyperparameters
SCHEDULE_KEYS = ("epochs", "batch_size", "select", "drop_last")


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

    def check(self, stage: str) -> "Schedule":
        """Raise a ConfigError naming `<stage>.<key>` for a value torch would reject or misuse."""
        for name in ("epochs", "batch_size"):
            positive_int(f"{stage}.{name}", getattr(self, name))
        if not isinstance(self.drop_last, bool):
            raise ConfigError(f"{stage}.drop_last must be true or false, got {self.drop_last!r}")
        if not isinstance(self.select, str) or self.select.count("/") != 1:
            raise ConfigError(
                f"{stage}.select must be <head>/<metric> (e.g. shallow/acc_conflicting), got {self.select!r}"
            )
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


def hparams(node: Mapping) -> dict[str, Any]:
    """The phase's hyperparameters: every key but the reserved ones."""
    return {k: v for k, v in node.items() if k not in RESERVED}


def schedule(cfg: Mapping, name: str, node: Mapping, seed: int) -> Schedule:
    """The phase's schedule: the top-level node it names (`schedule: stage2`) with its `schedule_overrides`."""
    source = node.get("schedule")
    if not isinstance(cfg.get(source) if isinstance(source, str) else None, Mapping):
        raise ConfigError(f"method.phases.{name}.schedule must name a schedule node such as stage2, got {source!r}")
    over = dict(node.get("schedule_overrides") or {})
    unknown = set(over) - {*SCHEDULE_KEYS, "selection"}
    if unknown:
        raise ConfigError(f"method.phases.{name}.schedule_overrides: unknown keys {sorted(unknown)}")
    if "epochs" in over:
        # a method yaml sets it from one of its own keys (jtt: method.id_epochs)
        positive_int(f"the epochs of phase {name} (method.phases.{name}.schedule_overrides.epochs)", over["epochs"])
    values = {k: over.get(k, cfg[source].get(k)) for k in SCHEDULE_KEYS}
    own = protocol(over["selection"]) if "selection" in over else None
    lr, decay = cfg[source].get("lr"), cfg[source].get("weight_decay")
    return Schedule(**values, seed=seed, selection=own, lr=lr, weight_decay=decay).check(source)


def check(method: Mapping, schedules: Mapping[str, Schedule]) -> None:
    """Every phase's hyperparameters, before anything is loaded or trained."""
    for name, node in phases(method).items():
        try:
            phase_class(name, node).check(name, schedules, **hparams(node))
        except TypeError as e:
            raise ConfigError(f"method.phases.{name}: {e}".replace("check()", "the phase")) from None


def build(name: str, node: Mapping, ctx: BuildContext, previous: Method | None) -> Method:
    """The phase's method, fresh, after the previous phase's (`previous`)."""
    try:
        return phase_class(name, node).build(ctx, previous, **hparams(node))
    except TypeError as e:
        raise ConfigError(f"method.phases.{name}: {e}".replace("build()", "the phase")) from None


def rebuild(method: Mapping, upto: str, ctx: BuildContext) -> Method:
    """The modules of phase `upto` (and of the phases before it, which it may wrap) ready for a checkpoint's
    state: built in order without optimisers."""
    previous = None
    for name, node in phases(method).items():
        previous = build(name, node, ctx, previous)
        if name == upto:
            return previous
    raise ConfigError(f"the checkpoint's phase {upto!r} is not a phase of method {method.get('name')!r}")
