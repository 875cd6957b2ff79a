"""The `run.py` commands the README and docs/ quote compose as written: every override parses, names a key the
config has and resolves (a sweep's lists are composed with their first value, as its first job would be)."""

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from denetdm.cli import CONF, missing_plugin, quote_numeric_choices

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def commands(page: Path) -> list[str]:
    """The `run.py` command lines of a page's bash blocks, continuation lines joined, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", page.read_text(), re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [line.split(" #")[0] for line in lines if re.search(r"\brun\.py\b", line)]


def overrides(command: str) -> list[str]:
    """The Hydra overrides of one command (flags and the program left out; a shell variable, as in a loop, is 0)."""
    tail = re.sub(r"\$\w+", "0", command.split("run.py", 1)[1].split(";")[0].split("&")[0])
    return [w for w in shlex.split(tail) if "=" in w and not w.startswith("-")]


def first_job(args: list[str]) -> list[str]:
    """A sweep's first job: each list or range replaced by its first value."""
    parsed = OverridesParser.create().parse_overrides(quote_numeric_choices(args))
    out = []
    for arg, o in zip(args, parsed):
        if o.is_sweep_override() and not o.key_or_group.startswith("hydra."):
            value = next(iter(o.sweep_string_iterator()))
            arg = f"{arg.split('=', 1)[0]}={value}"
        out.append(arg)
    return out


CASES = [(p.relative_to(ROOT).as_posix(), c) for p in PAGES for c in commands(p)]


def test_the_pages_quote_commands():
    assert len(CASES) >= 20 and any(page == "README.md" for page, _ in CASES)


@pytest.mark.parametrize("page,command", CASES)
def test_each_quoted_command_composes(page, command):
    args = first_job(overrides(command))
    launcher = next((a.split("=", 1)[1] for a in args if a.startswith("launcher=")), None)
    if launcher and missing_plugin(launcher):
        pytest.skip(f"launcher={launcher} needs `make install-launchers`")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=quote_numeric_choices(args), return_hydra_config=True)
    OmegaConf.to_container(cfg, resolve=False)
    OmegaConf.to_container(cfg.dataset, resolve=True)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_each_relative_link_names_a_file_that_exists(page):
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text())
    missing = [link for link in links if not (page.parent / link).exists()]
    assert not missing, f"{page.name} links to files that do not exist: {missing}"
