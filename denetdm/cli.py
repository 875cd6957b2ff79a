"""The command line, checked before Hydra runs: group choices, overrides, optional launcher plugins."""

import re
import shutil
from pathlib import Path

CONF = Path(__file__).resolve().parents[1] / "conf"


def quote_numeric_choices(args: list[str], conf: Path = CONF) -> list[str]:
    """Quote numeric config-group choices: Hydra parses `severity=4` as the int 4 and refuses it as a
    group choice, so `severity=4` becomes `severity='4'` (and `severity=1,2` becomes `severity='1','2'`)."""
    groups = {p.name for p in conf.iterdir() if p.is_dir()}
    out = []
    for arg in args:
        m = re.fullmatch(r"([+~]?)([\w/]+)=(\d+(?:,\d+)*)", arg)
        if m and m[2] in groups:
            arg = f"{m[1]}{m[2]}=" + ",".join(f"'{v}'" for v in m[3].split(","))
        out.append(arg)
    return out


def _options(conf: Path, group: str) -> list[str]:
    """The choices of a config group: its conf/<group>/*.yaml names."""
    return sorted(p.stem for p in (conf / group).glob("*.yaml"))


def check_group_choices(args: list[str], conf: Path = CONF) -> str | None:
    """One clear error line for an unknown config-group choice (e.g. `severity=9`), or None if all exist."""
    for arg in args:
        m = re.fullmatch(r"[+~]?(\w+)=([\w.'-]+(?:,[\w.'-]+)*)", arg)
        if not m or not (conf / m[1]).is_dir():
            continue
        options = _options(conf, m[1])
        for choice in m[2].replace("'", "").split(","):
            if choice not in options and choice != "null":
                hint = _did_you_mean(choice, options) or ";"
                return f"error: unknown {m[1]} {choice!r}{hint} choose one of: {', '.join(options)} (conf/{m[1]}/)"
    return None


# launcher/<option>.yaml -> (the plugin module it needs, its pip requirement)
LAUNCHER_PLUGINS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher==1.2.0"),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher==1.2.0"),
}


def missing_plugin(launcher: str) -> str | None:
    """The pip requirement of an optional launcher that is not installed, else None."""
    import importlib.util

    module, requirement = LAUNCHER_PLUGINS.get(launcher, (None, None))
    if module is None:
        return None
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    return None if found else requirement


# Config nodes that were renamed: a command line with the old name is told the new one (commit 514f448: the
# schedules are named by what they train, so baselines no longer borrow DeNetDM's stage2 node)
RENAMED = {"stage1": "experts", "stage2": "target"}


def _did_you_mean(word: str, known: list[str]) -> str:
    """`: did you mean 'x'?` for the closest known word, or nothing."""
    import difflib

    close = difflib.get_close_matches(word, known, n=1, cutoff=0.75)
    return f": did you mean {close[0]!r}?" if close else ""


def _known_keys(conf: Path) -> list[str]:
    """Every dotted key of the default config, and the config groups."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        tree = OmegaConf.to_container(compose(config_name="config"), resolve=False)
    keys, todo = [p.name for p in conf.iterdir() if p.is_dir()], [("", tree)]
    while todo:
        prefix, node = todo.pop()
        for k, v in node.items():
            keys.append(prefix + str(k))
            if isinstance(v, dict):
                todo.append((f"{prefix}{k}.", v))
    return keys


def check_launcher(args: list[str]) -> str | None:
    """One clear error line when `launcher=<x>` needs a plugin that is not installed."""
    for arg in args:
        m = re.fullmatch(r"\+?launcher=(\w+)", arg)
        if m and (req := missing_plugin(m[1])):
            return f"error: launcher={m[1]} needs the optional plugin {req}: run `make install-launchers`"
        if m and m[1] == "slurm" and not shutil.which("sbatch"):
            return (
                "error: launcher=slurm submits its trials with sbatch, which is not on this machine's PATH: run the "
                "command on a SLURM cluster's login node (here: launcher=joblib, or make cluster-up for a test cluster)"
            )
    return None


def _first_line(e: Exception) -> str:
    return " ".join(str(e).split("\n")[0].split())


def _parse_problem(overrides: list[str], conf: Path, multirun: bool = False) -> tuple[str | None, bool]:
    """The first override Hydra cannot read or that gives a group anything but one name (or, with -m, a sweep of
    names), as an error line; and whether any override is a sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser, sweep = OverridesParser.create(), False
    for override in overrides:
        try:
            (parsed,) = parser.parse_overrides([override])
        except HydraException as e:
            quoting = "quote a value with spaces or brackets: key='a b'"
            lines = [ln for ln in str(e).splitlines() if not ln.startswith(("Error parsing override", "See https"))]
            reason = " ".join((lines or ["Hydra cannot parse it"])[0].split())
            return f"error: cannot read the override {override!r}: {reason} ({quoting})", False
        sweep = sweep or parsed.is_sweep_override()
        group = parsed.key_or_group
        one_name = isinstance(parsed.value(), str) or (multirun and parsed.is_sweep_override())
        if (conf / group).is_dir() and not parsed.is_delete() and not one_name:
            options = ", ".join(_options(conf, group))
            return f"error: {group} takes one name, got {override.split('=', 1)[-1]!r}; choose one of: {options}", sweep
    return None, sweep


def _compose_problem(overrides: list[str], conf: Path, sweep_types: set | None = None) -> str | None:
    """The first composition error as one line; `sweep_types`: the sweeps of a `-m` command line, which the
    composed sweeper must be able to run (Hydra's basic one lists values; only Optuna samples an interval)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides, return_hydra_config=sweep_types is not None)
        if sweep_types is not None:
            if "BasicSweeper" in str(cfg.hydra.sweeper.get("_target_")) and sweep_types - DISCRETE:
                return "error: interval() needs an Optuna sweep (hparams_search=<preset>); list values instead: key=a,b"
            with open_dict(cfg):
                del cfg["hydra"]  # its job keys resolve only inside a running job
        OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # Hydra's and OmegaConf's composition errors, as one line
        text = str(e)
        if "Could not override" in text or "not in struct" in text:
            key = (re.search(r"'([^']+)'", text) or [None, text])[1]
            # a node set whole (key={a: 1}) that adds a key inside it: Hydra's cause names that key
            inner = (re.search(r"full_key: (\S+)", str(e.__cause__)) or [None, ""])[1]
            key = inner if inner.startswith(key.lstrip("+~") + ".") else key
            head, dot, rest = key.lstrip("+~").partition(".")
            if head in RENAMED:
                now = f"{RENAMED[head]}{dot}{rest}"
                return f"error: the config has no key {key!r}: {head} is now called {RENAMED[head]} (use {now})"
            if hint := _did_you_mean(key, _known_keys(conf)):
                return f"error: the config has no key {key!r}{hint} (python run.py --cfg job lists every key)"
            return (
                f"error: the config has no key {key!r}: check its spelling "
                "(python run.py --cfg job lists every key), or add a new key with +key=value"
            )
        where = re.search(r"full_key: (\S+)", text)
        return f"error: {where[1] + ': ' if where else ''}{_first_line(e) or type(e).__name__}; fix that value"
    return None


def _sweep_jobs(overrides: list[str], conf: Path) -> tuple[list[list[str]], set, str | None]:
    """The jobs of a sweep worth composing before it starts (its first job, and one more for each swept value
    that holds an interpolation: a value that does not resolve would stop the sweep half-way in several lines),
    the kinds of sweep it holds, and a swept value that cannot work, as an error line. Intervals and globs are
    left to the sweeper."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, first, kinds, swept = OverridesParser.create(), [], set(), []
    for override in overrides:
        (parsed,) = parser.parse_overrides([override])
        kinds |= {parsed.value_type.name} if parsed.is_sweep_override() else set()
        if parsed.is_sweep_override() and parsed.value_type.name not in DISCRETE - {"GLOB_CHOICE_SWEEP"}:
            continue
        key = parsed.get_key_element()
        values = list(parsed.sweep_string_iterator()) if parsed.is_sweep_override() else [None]
        if not values:
            return [], kinds, f"error: {override} sweeps no value; give it at least one"
        if (conf / parsed.key_or_group).is_dir() and parsed.is_sweep_override():
            options = _options(conf, parsed.key_or_group)
            if bad := [v for v in (v.strip("'\"") for v in values) if v not in options and v != "null"]:
                return (
                    [],
                    kinds,
                    f"error: unknown {parsed.key_or_group} {bad[0]!r}; choose one of: {', '.join(options)}",
                )
        first.append(override if values == [None] else f"{key}={values[0]}")
        swept += [(len(first) - 1, f"{key}={v}") for v in values[1:] if "$" in v]
    return [first] + [first[:i] + [job] + first[i + 1 :] for i, job in swept], kinds, None


# the sweeps Hydra's basic sweeper runs (an interval needs a sampler: the Optuna sweeper's)
DISCRETE = {"SIMPLE_CHOICE_SWEEP", "CHOICE_SWEEP", "RANGE_SWEEP", "GLOB_CHOICE_SWEEP"}
SWEEP_FLAGS = ("-m", "--multirun")
# Hydra's modes: it takes one of them per command and refuses two with a traceback
MODES = {"-m": "-m", "--multirun": "-m", "-r": "--run", "--run": "--run", "-c": "--cfg", "--cfg": "--cfg"}
MODES |= {"-i": "--info", "--info": "--info", "-sc": "--shell-completion", "--shell-completion": "--shell-completion"}


def _mode_problem(args: list[str]) -> str | None:
    """One error line for two of Hydra's modes in one command (`-m ... --cfg job`)."""
    modes = list(dict.fromkeys(MODES[a] for a in args if a in MODES))
    if len(modes) < 2:
        return None
    hint = ""
    if {"-m", "--cfg"} <= set(modes):
        hint = "; to see one job's config, drop -m and give each swept key one value"
    return f"error: {' and '.join(modes)} cannot be combined: Hydra takes one of them per command{hint}"


def check_overrides(args: list[str], conf: Path = CONF) -> str | None:
    """One error line for an override Hydra cannot read, a key the config does not have, or a value that does
    not resolve (Hydra would print several lines); None when the command line composes. A `-m` sweep is checked
    on its first job; other Hydra flags (`--cfg job`, `-cn` ...) leave the command line to Hydra."""
    if problem := _mode_problem(args):
        return problem
    multirun = any(a in SWEEP_FLAGS for a in args)
    args = [a for a in args if a not in SWEEP_FLAGS]
    if any(a.startswith("-") for a in args):
        return None
    args = quote_numeric_choices(args, conf)  # severity=4 is the choice '4', as run.py passes it on
    problem, sweep = _parse_problem(args, conf, multirun)
    if problem or not multirun:
        # a sweep without -m (a preset with hydra.mode=MULTIRUN): its jobs are composed later, one by one
        return problem or (None if sweep else _compose_problem(args, conf))
    jobs, kinds, problem = _sweep_jobs(args, conf)
    for job in jobs:
        problem = problem or _compose_problem(job, conf, kinds)
    return problem
