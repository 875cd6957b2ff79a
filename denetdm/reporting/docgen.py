"""docs/results.md is generated from the results store: each block between `<!-- table: ARGS -->` (or
`<!-- runs: ARGS -->`) and `<!-- end -->` is replaced by what those arguments give, so the prose around the
numbers is written by hand and the numbers never are. `python sweep.py report` rewrites the file; `--check`
says whether it is up to date (a test runs it)."""

import argparse
import re
import shlex
from collections.abc import Callable
from pathlib import Path

from denetdm.errors import DataError
from denetdm.reporting.runs import Run, collect, finite
from denetdm.reporting.tables import add_published, build_table, is_fraction, to_markdown
from denetdm.training.selection import protocol

BLOCK = re.compile(r"^<!-- (table|runs): (.*?) -->\n.*?^<!-- end -->\n", re.M | re.S)


def _table(argv: list[str]) -> str:
    p = argparse.ArgumentParser(prog="table", exit_on_error=False)
    p.add_argument("dirs", nargs="+")
    p.add_argument("--metric", default="test/acc_unbiased")
    p.add_argument("--selection", default="val")
    p.add_argument("--published", action="store_true")
    a = p.parse_args(argv)
    table = build_table(collect(a.dirs), a.metric, [protocol(s).name for s in a.selection.split(",")])
    if a.published:
        add_published(table)
    text, _, notes = to_markdown(table).partition("\n\n")
    return text + "\n\n" + "".join(f"- {line}\n" for line in notes.splitlines() if line.strip())


def value(run: Run, key: str) -> object:
    """A results key (`seed`, `stage1/selected_epoch`, ...), a dotted config key (`dataset.conflict_pct`), or the
    difference of two results keys, `A-B` (no key has a `-`)."""
    if "-" in key:
        a, b = (value(run, k) for k in key.split("-", 1))
        return a - b if finite(a) and finite(b) else None
    if key in run.results:
        return run.results[key]
    node: object = run.config
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _cell(key: str, v: object) -> str:
    if finite(v) and isinstance(v, float) and is_fraction(key):
        return f"{100 * v:.2f}"
    return "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def _runs(argv: list[str]) -> str:
    p = argparse.ArgumentParser(prog="runs", exit_on_error=False)
    p.add_argument("dirs", nargs="+")
    p.add_argument("--keys", required=True, help="comma-separated results or dotted config keys")
    p.add_argument("--where", action="append", default=[], help="KEY=VALUE (repeatable)")
    a = p.parse_args(argv)
    keys = a.keys.split(",")
    wanted = [w.split("=", 1) for w in a.where]
    runs = [r for r in collect(a.dirs).runs if all(str(value(r, k)) == v for k, v in wanted)]
    runs.sort(key=lambda r: [str(value(r, k)).zfill(8) for k in keys])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---:|" * len(keys)]
    lines += ["| " + " | ".join(_cell(k, value(r, k)) for k in keys) + " |" for r in runs]
    return "\n".join(lines) + f"\n\n- {len(runs)} runs\n"


RENDER: dict[str, Callable[[list[str]], str]] = {"table": _table, "runs": _runs}


def regenerate(text: str) -> str:
    """`text` with every block's body made anew from the store (paths relative to the working directory)."""

    def fill(m: re.Match) -> str:
        try:
            body = RENDER[m.group(1)](shlex.split(m.group(2)))
        except (argparse.ArgumentError, SystemExit) as e:
            raise DataError(f"bad block `<!-- {m.group(1)}: {m.group(2)} -->`: {e}") from None
        return f"<!-- {m.group(1)}: {m.group(2)} -->\n{body}<!-- end -->\n"

    return BLOCK.sub(fill, text)


def report(path: Path, check: bool = False) -> bool:
    """Regenerate `path` in place (or with `check`, only compare); whether it was up to date."""
    if not path.is_file():
        raise DataError(f"{path} does not exist; give the markdown file whose blocks to regenerate")
    old = path.read_text()
    new = regenerate(old)
    if not check and new != old:
        path.write_text(new)
    return new == old
