"""Property-based fuzz of command-line overrides: any value for a documented key ends in a run or in one error line.

Each example goes the way run.py goes: the command-line checks (group choices, override syntax, composition), then
train(); anything but a finished run or a DenetdmError (which run.py prints as one `error:` line) is a traceback.
Schedules are capped at one epoch, so a large but valid epoch count does not make the fuzz train for hours.
"""

import dataclasses
import functools
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from denetdm.cli import check_group_choices, check_overrides, quote_numeric_choices
from denetdm.errors import DenetdmError
from denetdm.training.loop import Trainer
from denetdm.training.pipeline import train

from conftest import COMMON, CONF, compose_cfg, fake_mnist

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
    *(f"{s}.{k}" for s in ("experts", "target") for k in ("epochs", "batch_size", "lr", "weight_decay", "select")),
    "experts.drop_last",
    "target.drop_last",
    *(
        f"{s}.lr_schedule{k}"
        for s in ("experts", "target")
        for k in ("", ".name", ".warmup_epochs", ".delay_epochs", ".step_epochs")
    ),
    "target.lr_schedule.gamma",
    "method.poe_weight",
    "method.dist_weight",
    "method.temperature",
    "method.frozen_bn",
    "optimizer.betas",
    "optimizer.eps",
    "probe.every",
    "probe.split",
    "probe.steps",
    "probe.at_init",
    "max_loss",  # (data_root and cache_dir: in the environment test below, on paths of the test's own)
    "debug",
    "remedy",
    "logger",
    "hparams_search",
    "experiment",
    "model.deep.init",
    "model.deep.norm",
    "model.deep.input_scale",
    "model.target.name",
    "dataset.base",
    "dataset.root",
    # a baseline's hyperparameters, fuzzed with that method chosen (`<method>:<key>`)
    *(f"jtt:method.{k}" for k in ("arch", "id_epochs", "upweight", "error_set", "weighting")),
    *(f"groupdro:method.{k}" for k in ("eta", "adjustment", "sampler")),
    *(f"lff:method.{k}" for k in ("q", "alpha")),
    *(f"dfa:method.{k}" for k in ("lambda_dis_align", "lambda_swap_align", "lambda_swap", "swap_after")),
    *(f"lc:method.{k}" for k in ("tau", "eta", "ema_alpha", "biased_lr_factor", "rampup_epochs", "normalize_prior")),
    # the W&B logger's keys (docs/sweeps.md), with it chosen (`logger=wandb:<key>`; WANDB_MODE=disabled in tests)
    *(f"logger=wandb:logger.{k}" for k in ("tags", "name", "group", "job_type", "log_checkpoints", "verbose")),
    "logger=wandb:logger.init_timeout",
]
# documented keys not fuzzed here, and why
NOT_FUZZED = {"launcher": "needs -m and a plugin: check_launcher's one line is tested in tests/test_sweeps.py"}

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


# no shrinking: a failure names its example at once (shrinking re-ran failing training runs for minutes, and their
# tracebacks held the memory of each). Each test runs twice: on fixed examples (derandomized: the same in every run)
# and on examples drawn anew in every run; hypothesis prints the failing example either way.
FIXED = settings(
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FRESH = settings(FIXED, derandomize=False, phases=[Phase.generate])


def runs_or_one_error_line(args: list[str], run_dir) -> None:
    """What run.py does with `args` (its checks, then train()): a run, or one error line, never a traceback."""
    if problem := check_group_choices(args) or check_overrides(args):
        assert problem.startswith("error: ") and "\n" not in problem, problem
        return
    try:
        train(compose_cfg(args), run_dir)
    except DenetdmError as e:
        assert "\n" not in str(e) and str(e), repr(e)


def with_method(key: str) -> list[str]:
    """`<method>:<key>` chooses the method whose hyperparameter the key is (`<group>=<choice>:<key>`: that choice)."""
    method, _, key = key.rpartition(":")
    return ([method if "=" in method else f"method={method}"] if method else []) + [key]


def test_the_fuzz_covers_every_documented_key():
    import re

    from conftest import ROOT

    rows = (ROOT / "docs" / "configuration.md").read_text().split("\n| ")[1:]
    documented = {k for row in rows for k in re.findall(r"`([a-z_]+(?:\.[a-z_]+)*)`", row.split(" | ")[0])}
    documented = {k for k in documented if compose_has(k)}
    fuzzed = {k.rpartition(":")[2] for k in KEYS} | {f"dataset.{k}" for keys in IMAGE_KEYS.values() for k in keys}
    assert documented - fuzzed - set(NOT_FUZZED) == set()


def compose_has(key: str) -> bool:
    """Whether `key` is a config key or group of the composed default config (or of a method's)."""
    from omegaconf import OmegaConf

    return (CONF / key).is_dir() or any(OmegaConf.select(c, key, default="absent") != "absent" for c in _configs())


@functools.cache
def _configs() -> list:
    return [compose_cfg([f"method={m}", "dataset=images_csv"]) for m in ("denetdm", "jtt", "groupdro", "lff")]


def one_value(key: str, value: object, tmp_path_factory) -> None:
    *method, key = with_method(key)
    runs_or_one_error_line([*BASE, *method, f"{key}={render(value)}"], tmp_path_factory.mktemp("fuzz"))


@pytest.mark.slow
@settings(FIXED, max_examples=150)
@given(key=st.sampled_from(KEYS), value=VALUES)
@example(key="optimizer.betas", value=[])  # found by this test: torch's IndexError
@example(key="threads", value=2**31)  # found by this test: torch started them all
@example(key="model.deep.depth", value=2**31)  # found by this test: layers built until the machine swapped
@example(key="model.shallow.width", value=2**31)  # found by this test: torch's size overflows
@example(key="model.shallow.width", value=2**63)
def test_any_value_for_a_documented_key_runs_or_is_one_error_line(key, value, one_epoch, tmp_path_factory):
    one_value(key, value, tmp_path_factory)


@pytest.mark.slow
@settings(FRESH, max_examples=20)
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_any_value_drawn_anew_runs_or_is_one_error_line(key, value, one_epoch, tmp_path_factory):
    one_value(key, value, tmp_path_factory)


# sweep values as typed after `-m key=`: lists, Hydra's sweep functions, and their misuses
SWEEPS = st.one_of(
    st.lists(VALUES, min_size=1, max_size=3).map(lambda vs: ",".join(map(render, vs))),
    st.tuples(st.integers(-2, 4), st.integers(-2, 4)).map(lambda ab: f"range({ab[0]},{ab[1]})"),
    st.lists(VALUES, max_size=3).map(lambda vs: f"choice({','.join(map(render, vs))})"),
    st.tuples(st.floats(-1, 2), st.floats(-1, 2)).map(lambda ab: f"interval({ab[0]},{ab[1]})"),
    st.sampled_from(["glob(*)", "glob(e*)", "1,${seed}", "1,${nope}", "${seed},", "range(a)", "4,,5"]),
)


def one_sweep(key: str, sweep: str, tmp_path_factory) -> None:
    """`run.py -m key=<sweep>` as run.py and Hydra's basic sweeper take it: the checks, then each job (at most 3)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.utils import create_config_search_path
    from hydra.core.override_parser.overrides_parser import OverridesParser

    *method, key = with_method(key)
    args = ["-m", *BASE, *method, f"{key}={sweep}"]
    if problem := check_group_choices(args) or check_overrides(args):
        assert problem.startswith("error: ") and "\n" not in problem, problem
        return
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONF)))  # globs read the groups
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(quote_numeric_choices(args[1:]))
    (jobs,) = BasicSweeper.split_arguments(parsed, None) or [[]]
    for job in jobs[:3]:
        runs_or_one_error_line(job, tmp_path_factory.mktemp("sweep"))


@pytest.mark.slow
@settings(FIXED, max_examples=40)
@given(key=st.sampled_from(KEYS), sweep=SWEEPS)
@example(key="seed", sweep="interval(0,1)")  # found by this test: the basic sweeper's traceback
@example(key="seed", sweep="range(0)")  # found by this test: a sweep of no job, silently
@example(key="dataset.conflict_pct", sweep="1,${nope}")  # found by this test: the second job's composition
@example(key="severity", sweep="range(1,9)")  # found by this test: Hydra's several lines
def test_any_sweep_command_line_runs_or_is_one_error_line(key, sweep, one_epoch, tmp_path_factory):
    one_sweep(key, sweep, tmp_path_factory)


@pytest.mark.slow
@settings(FRESH, max_examples=10)
@given(key=st.sampled_from(KEYS), sweep=SWEEPS)
def test_any_sweep_drawn_anew_runs_or_is_one_error_line(key, sweep, one_epoch, tmp_path_factory):
    one_sweep(key, sweep, tmp_path_factory)


# --- the environment's data and cache paths --------------------------------------------------------------------------


def _path(kind: str, tmp: Path) -> Path:
    """A path of each kind a user's environment can hold: fine, missing, a file, below a file, read-only."""
    (tmp / "a_file").write_text("not a folder")
    paths = {"missing": tmp / "missing", "file": tmp / "a_file", "below_a_file": tmp / "a_file" / "sub"}
    if kind == "read_only":
        (tmp / "read_only").mkdir(mode=0o500, exist_ok=True)  # root writes there anyway: one more fine folder
    return paths.get(kind, tmp / kind)


@pytest.mark.slow
@pytest.mark.parametrize("data", ["fake_mnist", "missing", "file", "read_only"])
@pytest.mark.parametrize("cache", ["fresh", "missing", "file", "below_a_file", "read_only"])
def test_any_data_and_cache_path_in_the_environment_runs_or_is_one_error_line(data, cache, tmp_path, monkeypatch):
    data_dir = fake_mnist(tmp_path / "fake_mnist") if data == "fake_mnist" else _path(data, tmp_path)
    monkeypatch.setenv("DENETDM_DATA", str(data_dir))
    monkeypatch.setenv("DENETDM_CACHE", str(_path(cache, tmp_path)))
    args = [*COMMON, "dataset=cmnist", "dataset.download=false", "dataset.val_size=50", "threads=1"]
    runs_or_one_error_line([*args, "experts.epochs=1", "target.epochs=1"], tmp_path / "run")
    if data == "fake_mnist":  # the data is fine: the run finished whatever the cache path
        assert (tmp_path / "run" / "done").exists()


# --- the image datasets, on small generated archives -----------------------------------------------------------------


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[str, Path]:
    """A CIFAR-10-layout zip (16 train and 4 test images a class), a BFFHQ zip (its second layout) and a Waterbirds
    one (images_csv)."""
    from test_image_datasets import CLASSES, _bffhq_tree, _save, _zip
    from test_images_csv import waterbirds_tree

    top, rng = tmp_path_factory.mktemp("cifar") / "cifar10", np.random.default_rng(0)
    for split, n in (("train", 16), ("test", 4)):
        for c in CLASSES:
            for i in range(n):
                _save(top / split / c / f"{i:04d}.png", rng, 32)
    bffhq = _bffhq_tree(tmp_path_factory.mktemp("bffhq") / "bffhq", "b", rng)
    birds = waterbirds_tree(tmp_path_factory.mktemp("waterbirds") / "waterbirds", n=120)  # 84 train: a batch of 64
    return {"ccifar10": _zip(top), "bffhq": _zip(bffhq), "waterbirds": _zip(birds)}


IMAGE_KEYS = {
    "ccifar10": ["corruption_type", "conflict_pct", "val_size", "subset", "biased_val_size", "augment", "source"],
    "bffhq": ["image_size", "conflict_pct", "subset", "augment", "root", "workers"],
    "waterbirds": ["tables", "columns", "splits", "aligned", "images", "image_size", "conflict_pct", "root"],
}
IMAGE_BASE = {
    "ccifar10": ["dataset.val_size=20", "dataset.conflict_pct=5", "dataset.workers=1", "backbone_depth=mlp"],
    "bffhq": ["dataset.image_size=16", "dataset.workers=1", "backbone_depth=mlp"],
    "waterbirds": ["dataset.image_size=16", "dataset.workers=1", "backbone_depth=mlp"],
}


def one_image_value(dataset: str, key: str, value: object, archives, tmp_path_factory) -> None:
    where = "source" if dataset == "ccifar10" else "root"
    args = [*COMMON, f"dataset={dataset}", f"dataset.{where}={archives[dataset]}", *IMAGE_BASE[dataset]]
    args += ["experts.epochs=1", "target.epochs=1", "threads=1", f"cache_dir={tmp_path_factory.mktemp('cache')}"]
    runs_or_one_error_line([*args, f"dataset.{key}={render(value)}"], tmp_path_factory.mktemp("image"))


IMAGE_CASES = st.sampled_from([(d, k) for d, keys in IMAGE_KEYS.items() for k in keys])


@pytest.mark.slow
@settings(FIXED, max_examples=20)
@given(case=IMAGE_CASES, value=VALUES)
def test_any_value_for_an_image_dataset_runs_or_is_one_error_line(case, value, archives, tmp_path_factory):
    one_image_value(*case, value, archives, tmp_path_factory)


@pytest.mark.slow
@settings(FRESH, max_examples=4)
@given(case=IMAGE_CASES, value=VALUES)
def test_any_value_for_an_image_dataset_drawn_anew_runs_or_is_one_error_line(case, value, archives, tmp_path_factory):
    one_image_value(*case, value, archives, tmp_path_factory)


# --- sweep.py: every command on damaged, missing and unwritable inputs -----------------------------------------------

# what a user's files can look like after a crash, an edit or a copy gone wrong
DAMAGES = {
    "results.json": ["", "{", "[]", '"text"', '{"config": 5}', '{"method": "x"}', "\x00\xff"],
    "metrics.jsonl": ["", "{", '{"stage": 5}\n', "not json\n", '{"epoch": "x", "stage": "stage1"}\n'],
    "trials.jsonl": ["", "{", '{"number": "x"}\n', "[]\n", '{"number": 1, "params": 5, "state": 7}\n'],
    "optimization_results.yaml": ["", ":", "best_value: x", "- 1", "best_params: 5\nbest_value: 0.5"],
    "failed.json": ["", "{", "[]", '{"error": 5}'],
    "record": ["", "{", '{"format": 99}', "[]"],
}
# each command's options, given a value a user could type: a word, a number, a path that cannot be written
OPTIONS = {
    "table": ["--metric", "--selection", "--where", "--format", "--last-epoch", "--published"],
    "plot": ["--out", "--format", "--dpi"],
    "best": ["--storage", "--study-name"],
    "wandb": ["--project", "--mode"],
    "export": [],
    "report": ["--check"],
}
OPTION_VALUES = st.one_of(
    st.sampled_from(["val/acc", "stage1/separation", "nope", "oracle,val", "last", "seed=0", "x=", "=", "md", "csv"]),
    st.sampled_from(["-1", "0", "5", "1e9", "/proc/x/y", "/dev/null", "sqlite:///", "journal:/proc/x", "offline"]),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=8),
)


def sweep_py_ends_well(argv: list[str]) -> None:
    """What `python sweep.py ARGV` does: output, or one `error:` line (SystemExit); never a traceback."""
    from sweep import main as sweep_main

    try:
        sweep_main(argv)
    except SystemExit as e:
        if e.code not in (None, 0, 2):  # 2: argparse's own usage error, one line after its usage text
            assert isinstance(e.code, str) and e.code.startswith("error: ") and "\n" not in e.code, e.code


def damaged_copy(tmp: Path, file: str, text: str) -> Path:
    """The committed fixture sweeps, with one file of each run (or one store record) replaced by `text`."""
    import shutil

    from conftest import ROOT

    root = tmp / "sweeps"
    shutil.copytree(ROOT / "tests" / "fixtures" / "sweeps", root)
    sweep_py_ends_well(["export", str(root / "seeds"), "--to", str(tmp / "store")])
    if file == "record":
        targets = sorted((tmp / "store").glob("*.record.json"))[:1]
    else:
        targets = sorted(root.rglob(file))[:2] or [root / "seeds" / "0" / file]
    for t in targets:
        t.write_bytes(text.encode("utf-8", "surrogateescape"))
    return root


COMMANDS = ["table", "plot", "best", "wandb", "export", "report"]


def one_sweep_py(command: str, damage: tuple[str, str], options: list, tmp_path_factory, monkeypatch) -> None:
    """`sweep.py <command>` on a damaged copy of the fixture sweeps, with some of its options."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    tmp = tmp_path_factory.mktemp("sweeppy")
    monkeypatch.chdir(tmp)  # a drawn `--out` is a relative path: it lands here, not in the checkout
    root = damaged_copy(tmp, *damage)
    args = {"export": [str(root), "--to", str(tmp / "out")], "report": [str(tmp / "doc.md")]}.get(command)
    if command == "report":
        (tmp / "doc.md").write_text(f"<!-- table: {tmp / 'store'} -->\n<!-- end -->\n")
    args = args or [str(root / "depth_gap" if command == "best" else root)]
    for k, value in options:  # an option of this command, where it has one, with a value typed after it
        if OPTIONS[command]:
            flag = OPTIONS[command][k % len(OPTIONS[command])]
            args += [flag] if flag in ("--last-epoch", "--published", "--check") else [flag, value]
    sweep_py_ends_well([command, *args])


SWEEP_PY_CASES = dict(
    command=st.sampled_from(COMMANDS),
    damage=st.sampled_from([(f, t) for f, texts in DAMAGES.items() for t in texts]),
    options=st.lists(st.tuples(st.integers(0, 5), OPTION_VALUES), max_size=2),
)


@pytest.mark.slow
@settings(FIXED, max_examples=60)
@given(**SWEEP_PY_CASES)
@example(command="best", damage=("optimization_results.yaml", "- 1"), options=[])  # found by this test
@example(command="table", damage=("results.json", '{"config": 5}'), options=[])  # found by this test
@example(command="export", damage=("metrics.jsonl", '{"epoch": "x", "stage": "stage1"}\n'), options=[])  # ditto
@example(command="plot", damage=("trials.jsonl", '{"number": 1, "params": 5, "state": 7}\n'), options=[])  # ditto
@example(command="best", damage=("failed.json", ""), options=[(0, "journal:/proc/x")])  # found by this test
@example(command="wandb", damage=("failed.json", ""), options=[(0, "test/acc")])  # W&B refuses the project name
@example(command="plot", damage=("failed.json", ""), options=[(0, "/proc/x/y")])  # found by this test
def test_every_sweep_py_command_on_damaged_inputs_ends_in_output_or_one_error_line(
    command, damage, options, tmp_path_factory, monkeypatch
):
    one_sweep_py(command, damage, options, tmp_path_factory, monkeypatch)


@pytest.mark.slow
@settings(FRESH, max_examples=15)
@given(**SWEEP_PY_CASES)
def test_every_sweep_py_command_drawn_anew_ends_in_output_or_one_error_line(
    command, damage, options, tmp_path_factory, monkeypatch
):
    one_sweep_py(command, damage, options, tmp_path_factory, monkeypatch)


# --- the Optuna sweeper's keys, on the real command line ------------------------------------------------------------

SWEEPER_KEYS = [
    *("n_trials", "max_failure_rate", "direction", "study_name", "n_jobs", "fail_collapsed", "pruner"),
    *("sampler.seed", "storage", "custom_search_space"),
]


def one_sweeper_value(key: str, value: object, tmp: Path) -> None:
    """`run.py -m hparams_search=distill hydra.sweeper.<key>=<value>` (one trial of one epoch each): a sweep, or
    one error line."""
    import subprocess
    import sys

    from conftest import ROOT

    if key == "n_trials" and isinstance(value, int) and not isinstance(value, bool) and value > 2:
        value = 2  # a valid but huge sweep would run for days
    args = ["-m", "hparams_search=distill", *BASE, f"hydra.sweep.dir={tmp / 'sweep'}"]
    args += [] if key == "n_trials" else ["hydra.sweeper.n_trials=1"]
    cmd = [sys.executable, str(ROOT / "run.py"), *args, f"hydra.sweeper.{key}={render(value)}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    if proc.returncode:
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: "), proc.stderr[-3000:]


@pytest.mark.slow
@settings(FIXED, max_examples=12)
@given(key=st.sampled_from(SWEEPER_KEYS), value=VALUES)
@example(key="sampler.seed", value=-1)  # found by this test: Hydra's instantiation error
@example(key="custom_search_space", value="x")  # found by this test: Hydra's import error
@example(key="storage", value="journal:/proc/x/study.journal")  # found by this test: a FileNotFoundError
def test_any_value_for_a_sweeper_key_sweeps_or_is_one_error_line(key, value, tmp_path_factory):
    one_sweeper_value(key, value, tmp_path_factory.mktemp("sweeper"))
