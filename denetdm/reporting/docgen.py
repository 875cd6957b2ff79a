"""docs/results.md is generated from the results store: each block between `<!-- table: ARGS -->` (or `runs`,
`curves`, `detector`, `mechanism`) and `<!-- end -->` is replaced by what those arguments give, so the prose around
the numbers is written by hand and the numbers never are. `python sweep.py report` rewrites the file; `--check`
says whether it is up to date (a test runs it)."""

import argparse
import json
import re
import shlex
import statistics
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from denetdm.errors import DataError
from denetdm.reporting.runs import Collection, Run, collect, finite
from denetdm.reporting.tables import add_published, build_table, is_fraction, to_markdown
from denetdm.selection import protocol
from denetdm.verdict import COLLAPSED, TRUTH_ALIGNED, judge_record

BLOCK = re.compile(r"^<!-- (table|runs|curves|detector|mechanism): (.*?) -->\n.*?^<!-- end -->\n", re.M | re.S)


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, exit_on_error=False)
    p.add_argument("dirs", nargs="+")
    p.add_argument("--where", action="append", default=[], help="KEY=VALUE (repeatable)")
    return p


def select(dirs: list[str], where: list[str]) -> Collection:
    """The runs below `dirs` whose `value` of each key in `where` (`KEY=VALUE`) prints as one of the values given
    for that key (a key given twice: either value)."""
    pairs = [w.split("=", 1) for w in where]
    if any(len(w) != 2 for w in pairs):
        raise DataError(f"--where takes KEY=VALUE (dataset.conflict_pct=1), got {where}")
    wanted: dict[str, set[str]] = {}
    for k, v in pairs:
        wanted.setdefault(k, set()).add(v)
    coll = collect(dirs)
    coll.runs = [r for r in coll.runs if all(str(value(r, k)) in vs for k, vs in wanted.items())]
    return coll


def _table(argv: list[str]) -> str:
    p = _parser("table")
    p.add_argument("--metric", default="test/acc_unbiased")
    p.add_argument("--selection", default="val")
    p.add_argument("--published", action="store_true")
    p.add_argument("--last-epoch", action="store_true")
    a = p.parse_args(argv)
    selections = [protocol(s).name for s in a.selection.split(",")]
    table = build_table(select(a.dirs, a.where), a.metric, selections, a.last_epoch)
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
    p = _parser("runs")
    p.add_argument("--keys", required=True, help="comma-separated results or dotted config keys")
    a = p.parse_args(argv)
    keys = a.keys.split(",")
    runs = select(a.dirs, a.where).runs
    runs.sort(key=lambda r: [str(value(r, k)).zfill(8) for k in keys])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---:|" * len(keys)]
    lines += ["| " + " | ".join(_cell(k, value(r, k)) for k in keys) + " |" for r in runs]
    return "\n".join(lines) + f"\n\n- {len(runs)} runs\n"


def _curves(argv: list[str]) -> str:
    """Per-epoch curves of the selected runs side by side: a row every `--every` epochs and the last."""
    p = _parser("curves")
    p.add_argument("--keys", required=True, help="comma-separated curve keys (`stage1/shallow/test/acc`)")
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--label", default="seed", help="comma-separated keys that name each run's columns (seed)")
    a = p.parse_args(argv)
    if a.every < 1:
        raise DataError(f"--every must be a number of epochs >= 1, got {a.every}")
    labels, keys = a.label.split(","), a.keys.split(",")

    def name(r: Run, key: str) -> str:  # `weight_decay 0.001`: a dotted key by its last part; the key if several
        run = ", ".join(f"{k.split('.')[-1]} {value(r, k)}" for k in labels)
        return f"{run}: {key}" if len(keys) > 1 else run

    runs = sorted(select(a.dirs, a.where).runs, key=lambda r: [str(value(r, k)).zfill(8) for k in labels])
    cols = [(r, k) for r in runs for k in keys]
    records = {id(r): r.epochs() for r in runs}  # once per run: a record's curves are parsed anew each call
    series = {(id(r), k): {e["epoch"]: e[k] for e in records[id(r)] if k in e} for r, k in cols}
    last = max((max(s, default=0) for s in series.values()), default=0)
    epochs = sorted({1, last} | set(range(a.every, last + 1, a.every))) if last else []
    lines = ["| epoch | " + " | ".join(name(r, k) for r, k in cols) + " |"]
    lines.append("|---:|" + "---:|" * len(cols))
    lines += [f"| {e} | " + " | ".join(_cell(k, series[id(r), k].get(e)) for r, k in cols) + " |" for e in epochs]
    return "\n".join(lines) + f"\n\n- {len(runs)} runs" + ("\n" if len(keys) > 1 else f"; cells: {keys[0]}\n")


OUTCOMES = {(True, True): "hit", (False, True): "miss", (True, False): "false alarm", (False, False): "-"}


def _detector(argv: list[str]) -> str:
    """The collapse rule applied to each stage-1 run at its selected epoch (denetdm.verdict), against the
    truth it is measured by: a row per run (its store first), then the counts of hits, misses and false alarms."""
    p = _parser("detector")
    p.add_argument("--keys", default="method,depths,seed", help="comma-separated keys that name each run")
    a = p.parse_args(argv)
    keys = a.keys.split(",")
    runs = [r for r in select(a.dirs, a.where).runs if "stage1/selected_epoch" in r.results]
    runs.sort(key=lambda r: [r.path.parent.name, *(str(value(r, k)).zfill(8) for k in keys)])
    lines = ["| store | " + " | ".join(keys) + " | signal | collapsed | deep aligned | outcome |"]
    lines.append("|---|" + "---:|" * (len(keys) + 4))
    outcomes, unread = Counter(), Counter()
    for r in runs:
        if (v := judge_record(r.results, r.epochs())) is None:
            unread[r.path.parent.name] += 1
            continue
        said = v["stage1/collapsed"]
        outcome = "not judged" if said is None else OUTCOMES[said, v["truth"]]
        outcomes[outcome] += 1
        cells = [r.path.parent.name, *(_cell(k, value(r, k)) for k in keys), f"{v['stage1/collapse_signal']:.3f}"]
        cells += [str(said), _cell("acc", r.results["stage1/deep/test/acc_aligned"]), outcome]
        lines.append("| " + " | ".join(cells) + " |")
    counts = ", ".join(f"{outcomes[k]} {k}" for k in ("hit", "miss", "false alarm", "not judged"))
    notes = [f"{sum(outcomes.values())} stage-1 runs: {counts}, {outcomes['-']} rightly passed"]
    notes.append(f"rule: collapsed when signal < {COLLAPSED} (deep / shallow pred_entropy on val, no label read)")
    notes.append(
        f"truth (bias labels, this measurement only): deep expert right on < {TRUTH_ALIGNED:.0%} of aligned test images"
    )
    if unread:
        notes.append("without the curves it needs: " + ", ".join(f"{n} in {s}" for s, n in sorted(unread.items())))
    return "\n".join(lines) + "\n\n" + "".join(f"- {n}\n" for n in notes)


def _mean(traces: list[dict], step: int, read: Callable[[dict], float]) -> float:
    return statistics.fmean(read(next(t for t in trace if t["step"] == step)) for trace in traces)


def _layers(key: str, layers: slice = slice(None)) -> Callable[[dict], float]:
    return lambda m: statistics.fmean(x[key] for x in m["layers"][layers])


MEASURES = {  # column -> (step: "init" or "end", reading of one measurement)
    "input share, last layer (init)": ("init", lambda m: m["layers"][-1]["input_share"]),
    "dead units (init)": ("init", _layers("dead")),
    "grad RMS, first layer (init)": ("init", lambda m: m["layers"][0]["grad_rms"]),
    "decay-dominated weights (init)": ("init", _layers("decay_dominated")),
    "weight RMS, hidden layers (end)": ("end", _layers("weight_rms", slice(1, None))),
    "deep / shallow feature RMS (end)": ("end", lambda m: m["deep_feature_rms"] / m["shallow_feature_rms"]),
    "deep pred_entropy (end)": ("end", lambda m: m["deep_pred_entropy"]),
    "deep aligned acc (end)": ("end", lambda m: m["deep_acc_aligned"]),
}


def _mechanism(argv: list[str]) -> str:
    """Seed means of `python -m denetdm.analysis.collapse` files (committed under results/): per deep depth and
    weight-decay arm, the measures at initialisation and at the last step measured."""
    p = argparse.ArgumentParser(prog="mechanism", exit_on_error=False)
    p.add_argument("files", nargs="+")
    a = p.parse_args(argv)
    lines = [
        "| deep MLP | depth | weight decay | " + " | ".join(MEASURES) + " |",
        "|---|" + "---:|" * (len(MEASURES) + 2),
    ]
    seeds = set()
    for path in a.files:
        result = json.loads(Path(path).read_text())
        deep, end = result["model"]["deep"], max(result["collapse"]["at"])
        name = f"init {deep.get('init', 'default')}, norm {deep.get('norm', 'none')}"
        groups: dict[tuple, list] = {}
        for run in result["runs"]:
            groups.setdefault((run["depth"], run["arm"]), []).append(run["trace"])
        seeds |= {len(traces) for traces in groups.values()}
        for (depth, arm), traces in groups.items():
            cells = [_mean(traces, 0 if at == "init" else end, read) for at, read in MEASURES.values()]
            lines.append(f"| {name} | {depth} | {arm} | " + " | ".join(f"{c:.3g}" for c in cells) + " |")
    return "\n".join(lines) + f"\n\n- cells: means over {', '.join(map(str, sorted(seeds)))} seeds; end: step {end}\n"


RENDER: dict[str, Callable[[list[str]], str]] = {
    "table": _table,
    "runs": _runs,
    "curves": _curves,
    "detector": _detector,
    "mechanism": _mechanism,
}


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
    try:
        old = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path} cannot be read as text ({e}); give a markdown file") from None
    opened = len(re.findall(r"^<!-- (?:table|runs|curves|detector|mechanism): ", old, re.M))
    if opened != len(BLOCK.findall(old)):
        raise DataError(f"{path}: a generated block has no `<!-- end -->` line; close each block with one")
    if not opened:
        raise DataError(
            f"{path} has no generated blocks (`<!-- table: results/<store> -->` ... `<!-- end -->`): nothing to make"
        )
    new = regenerate(old)
    if not check and new != old:
        path.write_text(new)
    return new == old
