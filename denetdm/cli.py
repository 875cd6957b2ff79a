"""Command-line helpers shared by run.py and the tests."""

import re
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
                return f"error: unknown {m[1]} {choice!r}; choose one of: {', '.join(options)} (conf/{m[1]}/)"
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


def check_launcher(args: list[str]) -> str | None:
    """One clear error line when `launcher=<x>` needs a plugin that is not installed."""
    for arg in args:
        m = re.fullmatch(r"\+?launcher=(\w+)", arg)
        if m and (req := missing_plugin(m[1])):
            return f"error: launcher={m[1]} needs the optional plugin {req}: run `make install-launchers`"
    return None


def instantiate_checked(node, **kwargs):
    """hydra.utils.instantiate, with our own errors unwrapped and a bad argument named in one line."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from denetdm.errors import ConfigError, DenetdmError

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, DenetdmError):
            raise cause from None
        target = node.get("_target_", "?") if hasattr(node, "get") else "?"
        raise ConfigError(f"cannot build {target}: {cause or e}".replace("\n", " ")) from None


def _first_line(e: Exception) -> str:
    return " ".join(str(e).split("\n")[0].split())


def _parse_problem(overrides: list[str], conf: Path) -> tuple[str | None, bool]:
    """The first override Hydra cannot read or that gives a group anything but one name, as an error line; and
    whether any override is a sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser, sweep = OverridesParser.create(), False
    for override in overrides:
        try:
            (parsed,) = parser.parse_overrides([override])
        except HydraException as e:
            quoting = "quote a value with spaces or brackets: key='a b'"
            return f"error: cannot read the override {override!r}: {_first_line(e)} ({quoting})", False
        sweep = sweep or parsed.is_sweep_override()
        group = parsed.key_or_group
        if (conf / group).is_dir() and not parsed.is_delete() and not isinstance(parsed.value(), str):
            options = ", ".join(_options(conf, group))
            return f"error: {group} takes one name, got {override.split('=', 1)[-1]!r}; choose one of: {options}", sweep
    return None, sweep


def _compose_problem(overrides: list[str], conf: Path) -> str | None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
        OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # Hydra's and OmegaConf's composition errors, as one line
        text = str(e)
        if "Could not override" in text or "not in struct" in text:
            key = re.search(r"'([^']+)'", text)
            return (
                f"error: the config has no key {key[1] if key else text!r}: check its spelling "
                "(python run.py --cfg job lists every key), or add a new key with +key=value"
            )
        where = re.search(r"full_key: (\S+)", text)
        return f"error: {where[1] + ': ' if where else ''}{_first_line(e) or type(e).__name__}; fix that value"
    return None


def check_overrides(args: list[str], conf: Path = CONF) -> str | None:
    """One error line for an override Hydra cannot read, a key the config does not have, or a value that does
    not resolve (Hydra would print several lines); None when the command line composes. Command lines with Hydra
    flags (`-m` sweeps, `--cfg job`) are left to Hydra: a sweep's jobs are composed one by one later."""
    if any(a.startswith("-") for a in args):  # -m, --cfg job, -cn ...: Hydra reads those command lines itself
        return None
    args = quote_numeric_choices(args, conf)  # severity=4 is the choice '4', as run.py passes it on
    problem, sweep = _parse_problem(args, conf)
    # a sweep without -m (a preset with hydra.mode=MULTIRUN): its jobs are composed later, one by one
    return problem or (None if sweep else _compose_problem(args, conf))


def _scalar(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def record_swept_values(cfg, hc) -> None:
    """The basic sweeper does not say which values it chose: keep all of the job's overrides as trial.params."""
    from omegaconf import open_dict

    chosen = [o.split("=", 1) for o in hc.overrides.task if "=" in o and not o.startswith("trial.")]
    with open_dict(cfg):
        cfg.trial.params = {k.lstrip("+~"): _scalar(v) for k, v in chosen}


def trial_pruning(cfg, hc) -> dict | None:
    """What a trial of a denetdm_optuna sweep with a pruner reports each epoch to: its trial in the study's
    storage (None outside such sweeps). `hc`: the job's Hydra config."""
    pruner = hc.sweeper.get("pruner")
    if pruner is None or cfg.trial.number is None:
        return None
    from denetdm.pruning import study_storage

    storage = study_storage(hc.sweeper.get("storage"), hc.sweep.dir)
    return {"storage": storage, "study": cfg.trial.study, "number": int(cfg.trial.number), "pruner": pruner}


def job_value(outcome, records_failures: bool):
    """What a sweep job returns to its sweeper (run.py and the stacked launcher alike): the run's objective; for a
    run stopped by an error or the pruner, one log line, then the error itself to a sweeper that records failures
    (denetdm_optuna), NaN to any other (the basic sweeper would end the grid at the first failed job)."""
    import logging
    import math

    from denetdm.pruning import TrialPruned
    from denetdm.report import objective

    if isinstance(outcome, dict):
        return objective(outcome)
    pruned = isinstance(outcome, TrialPruned)
    level, word = (logging.INFO, "pruned") if pruned else (logging.ERROR, "failed")
    logging.getLogger("denetdm").log(level, "trial %s: %s", word, outcome)
    return outcome if records_failures else math.nan
