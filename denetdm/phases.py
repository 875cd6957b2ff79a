"""A method's phases from its config (conf/method/<name>.yaml): classes, hyperparameters, schedules, and
building them, freshly or as the skeleton of a checkpoint."""

from collections.abc import Mapping
from typing import Any

from hydra.utils import get_class

from denetdm.checks import positive_int
from denetdm.engine import Schedule
from denetdm.errors import ConfigError
from denetdm.methods.base import BuildContext, Method

RESERVED = ("_target_", "schedule", "schedule_overrides")  # phase keys that are not hyperparameters
SCHEDULE_KEYS = ("epochs", "batch_size", "select", "drop_last")


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
    values["drop_last"] = False if values["drop_last"] is None else values["drop_last"]  # configs from before it
    return Schedule(**values, seed=seed, selection=over.get("selection")).check(source)


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
