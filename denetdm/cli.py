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


def check_group_choices(args: list[str], conf: Path = CONF) -> str | None:
    """One clear error line for an unknown config-group choice (e.g. `severity=9`), or None if all exist."""
    for arg in args:
        m = re.fullmatch(r"[+~]?(\w+)=([\w.'-]+(?:,[\w.'-]+)*)", arg)
        if not m or not (conf / m[1]).is_dir():
            continue
        options = sorted(p.stem for p in (conf / m[1]).glob("*.yaml"))
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
