"""Model-selection protocols, named once: which split a checkpoint is chosen on, and whether bias labels may be
read there (docs/protocols.md §2). The training loop, results.json, tables and W&B all take the name from here."""

from dataclasses import dataclass

from denetdm.errors import ConfigError

# metrics that need only class labels: what the label-free protocols may select on
LABEL_FREE_METRICS = ("acc", "acc_worst_class")


@dataclass(frozen=True)
class Protocol:
    """A selection protocol: the split it reads (None: the last epoch) and whether it reads bias labels there."""

    name: str
    split: str | None
    bias_labels: bool
    about: str

    def key(self, stage: str, select: str, label_free_metric: str) -> str | None:
        """The `<stage>/<head>/<split>/<metric>` maximised to choose a checkpoint (None: keep the last epoch);
        `select` is the `<head>/<metric>` of the schedule, whose metric is swapped for a label-free one here
        when the protocol reads no bias labels."""
        if self.split is None:
            return None
        head, metric = select.split("/")
        if not self.bias_labels and metric not in LABEL_FREE_METRICS:
            metric = label_free_metric
        return f"{stage}/{head}/{self.split}/{metric}"


PROTOCOLS = {
    p.name: p
    for p in (
        Protocol("oracle", "test", True, "the test split with bias labels: the reference code's choice"),
        Protocol("val", "val", True, "the held-out validation split with bias labels"),
        Protocol("val_nolabels", "val", False, "the validation split with class labels only"),
        Protocol(
            "val_biased_nolabels",
            "val_biased",
            False,
            "a validation split with the training split's bias ratio, class labels only",
        ),
        Protocol("last", None, False, "the final epoch"),
    )
}
SYNONYMS = {"test": "oracle"}


def protocol(name: object) -> Protocol:
    """The protocol called `name` (`test` is a synonym of `oracle`), or one clear error listing them."""
    name = SYNONYMS.get(name, name) if isinstance(name, str) else name
    if name not in PROTOCOLS:
        raise ConfigError(f"selection must be one of {', '.join([*PROTOCOLS, *SYNONYMS])}, got {name!r}")
    return PROTOCOLS[name]


def check_label_free_metric(metric: object) -> str:
    """The metric the label-free protocols select on: one of LABEL_FREE_METRICS."""
    if metric not in LABEL_FREE_METRICS:
        raise ConfigError(f"selection_metric must be one of {', '.join(LABEL_FREE_METRICS)}, got {metric!r}")
    return metric
