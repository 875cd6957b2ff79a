"""A run's fingerprint: everything in its resolved config that can change its numbers.

One function serves resume (a checkpoint of another config is refused), the duplicate check of
`sweep.py table` (a run repeating another's config and seed counts once) and the grouping of runs into
settings (runs that differ only in seed). It reads a plain dict, so sweep.py needs neither torch nor Hydra.
"""

import copy
from collections.abc import Mapping

# Config keys that cannot change a run's numbers. A run's fingerprint is its whole resolved config minus
# these, so any key added to the config counts by default.
NOT_NUMERIC = (
    "hydra",  # Hydra's own node (present in configs composed with return_hydra_config)
    "threads",  # speed only
    "progress",  # terminal output
    "resume",  # whether a directory continues, not what it computes
    "max_loss",  # when a diverging run stops, not what a run that finishes computes
    "logger",  # where metrics are mirrored
    "trial",  # which sweep asked for the run
    "experiment_name",  # a label; the experiment's values themselves count
    "method.label",  # presentation: how tables name the method (results.json keeps it as method_label)
    "method.row_depths",  # presentation: which depths tell table rows apart (results.json keeps them as depths)
    "probe",  # probes read features; they change no trained number
    "search",  # the depth ranges a search samples from, not this run's depths
    "stage.name",  # which stages this process runs: each stage's own inputs are counted instead
    "stage.stages",
    "data_root",  # paths of the data, the cache and an image-tree source
    "cache_dir",
    "dataset.root",
    "dataset.cache_dir",
    "dataset.source",
    "dataset.download",  # how data is fetched and generated, not what it is
    "dataset.workers",
)


def drop(tree: dict, dotted: str) -> None:
    """Remove a dotted key from a config tree in place (nothing where it is absent)."""
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.get(key)
        if not isinstance(tree, dict):
            return
    tree.pop(leaf, None)


def _unread(config: Mapping, stage: str) -> tuple[str, ...]:
    """What a run that stops after phase `stage` does not read: the later phases' nodes, and the keys its method
    declares (`method.unread.<phase>`), so that such a run and a longer one share that phase (resume, table cells).
    The phases in the order they run: the method node's, which results.json and store records keep."""
    method = config.get("method") or {}
    names = list(method.get("phases") or {})
    later = names[names.index(stage) + 1 :] if stage in names else []
    unread = method.get("unread")
    declared = unread.get(stage) or [] if isinstance(unread, Mapping) else []  # the plan checks its shape
    return (*(f"method.phases.{n}" for n in later), *declared)


def last_phase(config: Mapping, stages: list[str] | None) -> str:
    """The phase a run's numbers stop after: its last stage, else (records without stages) its method's last."""
    names = [n for n, node in ((config.get("method") or {}).get("phases") or {}).items() if node is not None]
    return (stages or names or [""])[-1]


def _constant_lr(node: object) -> bool:
    """A schedule node's `lr_schedule` that keeps the learning rate as configured (no schedule, no warm-up): the
    runs made before schedules existed, whose records must keep their fingerprints (and store file names)."""
    lrs = node.get("lr_schedule", {}) if isinstance(node, dict) else {}
    return lrs is None or (isinstance(lrs, dict) and lrs.get("name", "none") == "none" and not lrs.get("warmup_epochs"))


def fingerprint(config: Mapping, stage: str) -> dict:
    """Everything in a resolved config that can change the numbers of `stage` (resume, repeats, grouping): a
    phase does not read the phases after it."""
    fp = copy.deepcopy(dict(config))
    for key in NOT_NUMERIC + ("method.unread",) + _unread(config, stage):  # the declaration is applied, not kept
        drop(fp, key)
    for node in fp.values():
        if isinstance(node, dict) and "lr_schedule" in node and _constant_lr(node):
            del node["lr_schedule"]
    return fp


def setting(config: Mapping, stages: list[str]) -> dict:
    """The fingerprint of a run's last stage without its seeds: runs of one setting are repeats over seeds."""
    fp = fingerprint(config, last_phase(config, stages))
    fp.pop("seed", None)
    if isinstance(fp.get("dataset"), dict):
        fp["dataset"].pop("seed", None)  # the data draw follows the run's seed by default
    return fp


def differences(a: object, b: object, prefix: str = "") -> list[str]:
    """The dotted keys at which two config trees differ (a key missing on one side differs)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def value_at(tree: Mapping, dotted: str) -> object:
    """The value at a dotted key of a config tree (None where absent)."""
    for key in dotted.split("."):
        tree = tree.get(key) if isinstance(tree, Mapping) else None
    return tree
