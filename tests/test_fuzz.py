"""Property-based fuzz of command-line overrides: any value for a documented key ends in a run or in one error line.

Each example goes the way run.py goes: the command-line checks (group choices, override syntax, composition), then
train(); anything but a finished run or a DenetdmError (which run.py prints as one `error:` line) is a traceback.
Schedules are capped at one epoch, so a large but valid epoch count does not make the fuzz train for hours.
"""

import dataclasses
import math

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from denetdm.cli import check_group_choices, check_overrides
from denetdm.errors import DenetdmError
from denetdm.training.engine import Trainer
from denetdm.training.pipeline import train

from conftest import COMMON, compose_cfg

BASE = [
    "dataset=synthetic",
    "dataset.train_size=300",
    "dataset.val_size=100",
    "dataset.test_size=100",
    "experts.epochs=1",
    "target.epochs=1",
    "threads=1",
    *COMMON,
]

# the documented configuration keys (docs/configuration.md) (a group choice is fuzzed with strings too)
KEYS = [
    "seed",
    "selection",
    "selection_metric",
    "objective",
    "device",
    "amp",
    "captured",
    "resume",
    "threads",
    "progress",
    "experiment_name",
    "dataset",
    "severity",
    "backbone_depth",
    "method",
    "stage",
    "optimizer",
    "dataset.biased_val_size",
    "dataset.conflict_pct",
    "dataset.val_size",
    "dataset.subset",
    "dataset.eval_subset",
    "dataset.seed",
    "dataset.train_size",
    "dataset.test_size",
    "model.shallow.depth",
    "model.deep.depth",
    "model.target.depth",
    "model.shallow.width",
    "model.deep.name",
    *(f"stage{i}.{k}" for i in (1, 2) for k in ("epochs", "batch_size", "lr", "weight_decay", "select", "drop_last")),
    "method.poe_weight",
    "method.dist_weight",
    "method.temperature",
    "method.frozen_bn",
    "optimizer.betas",
    "optimizer.eps",
    "probe.every",
    "probe.split",
    "probe.steps",
]

WORDS = ["cpu", "cuda", "auto", "val", "test", "oracle", "acc", "eval", "train", "mlp", "shallow/acc", "true", "none"]
VALUES = st.one_of(
    st.integers(-3, 12),
    st.sampled_from([2**31, 10**12, 2**63, -(2**63) - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.sampled_from(WORDS),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=10),
    st.lists(st.one_of(st.integers(-2, 3), st.floats(-2, 2)), max_size=3),
)


def render(value: object) -> str:
    """A value as it would be typed after `key=`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and not math.isfinite(value):
        return {math.inf: "inf", -math.inf: "-inf"}.get(value, "nan")
    if isinstance(value, list):
        return "[" + ",".join(render(v) for v in value) + "]"
    return str(value)


@pytest.fixture
def one_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    begin = Trainer.begin

    def capped(self, stage, method, data, schedule, *args, **kwargs):
        if isinstance(schedule.epochs, int) and schedule.epochs > 1:
            schedule = dataclasses.replace(schedule, epochs=1)
        return begin(self, stage, method, data, schedule, *args, **kwargs)

    monkeypatch.setattr(Trainer, "begin", capped)


@pytest.mark.slow
# no shrinking: a failure names its example at once (shrinking re-ran failing training runs for minutes, and their
# tracebacks held the memory of each); the examples drawn can vary with timing, so a failure may show in one run only
@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(key=st.sampled_from(KEYS), value=VALUES)
@example(key="optimizer.betas", value=[])  # found by this test: torch's IndexError
@example(key="threads", value=2**31)  # found by this test: torch started them all
@example(key="model.deep.depth", value=2**31)  # found by this test: layers built until the machine swapped
@example(key="model.shallow.width", value=2**31)  # found by this test: torch's size overflows
@example(key="model.shallow.width", value=2**63)
def test_any_value_for_a_documented_key_runs_or_is_one_error_line(key, value, one_epoch, tmp_path_factory):
    args = [*BASE, f"{key}={render(value)}"]
    if problem := check_group_choices(args) or check_overrides(args):
        assert problem.startswith("error: ") and "\n" not in problem, problem
        return
    try:
        train(compose_cfg(args), tmp_path_factory.mktemp("fuzz"))
    except DenetdmError as e:
        assert "\n" not in str(e) and str(e), repr(e)
