"""DomainBed-style tables: rows = method (and its depths where they vary), columns = selection protocol x
dataset x severity x conflict ratio, cells = mean +- std over seeds, optionally the published number beside.
Hyperparameters are chosen on each run's objective (validation), never on the metric shown."""

import csv
import functools
import io
import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from denetdm.fingerprint import differences, value_at
from denetdm.reporting.runs import BIAS_LABEL_MARK, Collection, Run, finite
from denetdm.selection import PROTOCOLS, SYNONYMS

CONF = Path(__file__).resolve().parents[2] / "conf"
PUBLISHED = Path(__file__).with_name("published.yaml")  # the paper's Tables 1 and 2 (docs/protocols.md §7)

EQUAL_DEPTH_MARK = " [equal depth]"  # the control without a depth gap (search.allow_equal)
OFF_PRESET_MARK = "[not the paper's schedule]"  # beside a published number: a quick or searched run


@dataclass
class Cell:
    """The runs of one row and column that share the chosen hyperparameter setting."""

    values: list[float]
    settings: int  # how many settings the cell chose from
    off_preset: list[str] = field(default_factory=list)  # where the chosen runs left the dataset preset's schedule
    flagged: bool = False  # shown beside a published number although off the preset
    collapsed: int = 0  # runs whose stage-1 deep expert collapsed (stage1/collapsed)

    @property
    def mean(self) -> float:
        """Mean over seeds."""
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds (None for a single run)."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None


@dataclass
class Table:
    """A metric over rows (method label, depths) and columns (protocol, dataset, severity, ratio), with what was
    left out and why, and the published numbers to show beside ours (`published`: (row, col) -> text)."""

    metric: str
    selections: list[str]
    last_epoch: bool = False  # the metric at the final phase's last epoch, not at the selected one
    rows: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    cols: list[tuple[str, str, str, float, str]] = field(default_factory=list)
    cells: dict[tuple, Cell] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    published: dict[tuple, str] | None = None
    names: dict[str, str] = field(default_factory=dict)  # row label -> method name (conf/method/<name>.yaml)
    varying: set[str] = field(default_factory=set)  # keys that split a method's runs into rows (split_settings)

    def row_label(self, row: tuple[str, tuple[int, ...]]) -> str:
        """The method's label, with its depths where the table holds several for it; an equal-depth pair (the
        control without a depth gap) is marked."""
        label, depths = row
        mark = EQUAL_DEPTH_MARK if len(depths) == 2 and depths[0] == depths[1] else ""
        if sum(r[0] == label for r in self.rows) < 2:
            return label + mark
        return f"{label} ({', '.join(map(str, depths))}){mark}"

    def col_label(self, col: tuple[str, str, str, float | None, str]) -> str:
        """Dataset, severity and ratio; the protocol where the table holds several; the data's digest where
        runs of other source files share the rest."""
        text = col[1] + (f" sev{col[2]}" if col[2] else "") + (" natural ratio" if col[3] is None else f" {col[3]:g}%")
        if sum(c[:4] == col[:4] for c in self.cols) > 1:
            text += f" [data {col[4][:8] or 'generated'}]"
        return f"{col[0]}: {text}" if len(self.selections) > 1 else text


@functools.cache  # read once per report, not once per run (callers only read it)
def _preset(dataset: str, method: str) -> dict:
    """The schedules of a dataset's preset (conf/dataset/), with what the method's own preset for that dataset
    sets (conf/method_dataset/<method>_<dataset>.yaml at the top level: its authors' schedule, DFA's)."""
    path = CONF / "dataset" / f"{dataset}.yaml"
    out = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    own = CONF / "method_dataset" / f"{method}_{dataset}.yaml"
    text = own.read_text() if own.exists() else ""
    if text.startswith("# @package _global_"):
        for name, node in (yaml.safe_load(text) or {}).items():
            if isinstance(node, dict) and isinstance(out.get(name), dict):
                out[name] = {**out[name], **node}
    return out


def off_preset(run: Run) -> list[str]:
    """The keys where a run's data or schedule leave its dataset preset's (the paper's schedule,
    conf/dataset/<name>.yaml, or its method's for that dataset): a quick run's subset or epochs, a searched
    learning rate."""
    cfg = run.config
    preset = _preset(str(cfg["dataset"]["name"]), str((cfg.get("method") or {}).get("name")))
    keys = [f"dataset.{k}" for k in ("subset", "eval_subset") if cfg["dataset"].get(k) is not None]
    phases = ((cfg.get("method") or {}).get("phases") or {}).values()
    used = {node.get("schedule") for node in phases if node}  # a phase a stage's fingerprint leaves out is null
    for name in sorted(used & set(preset)):
        ours = cfg.get(name) or {}
        for k, v in preset[name].items():
            if isinstance(v, dict):  # a node the preset sets in part (lr_schedule): the keys it sets
                keys += [f"{name}.{k}.{sub}" for sub, x in v.items() if (ours.get(k) or {}).get(sub) != x]
            elif ours.get(k) != v:
                keys.append(f"{name}.{k}")
    return keys


def _column(run: Run) -> tuple[str, str, str, float | None, str]:
    """Protocol, dataset, severity, ratio and the data's digest: runs of other source files never share a cell."""
    cfg = run.config
    dataset, digest = cfg["dataset"], cfg.get("data_digest") or ""
    level = "" if dataset.get("severity") is None else str(dataset["severity"])  # own data: no severity
    pct = dataset.get("conflict_pct")  # null: the data's own ratio (CelebA, your own data)
    return run.selection, dataset["name"], level, None if pct is None else float(pct), digest


def _choose(runs: list[Run]) -> tuple[list[Run], int]:
    # several settings in one cell (a search): keep the one with the best mean validation objective
    by_setting: dict[str, list[Run]] = {}
    for run in runs:
        by_setting.setdefault(run.setting, []).append(run)

    def score(group: list[Run]) -> float:
        vals = [r.objective for r in group if finite(r.objective)]
        return statistics.fmean(vals) if vals else float("-inf")

    best = max(by_setting.values(), key=score)  # max keeps the first of equals: deterministic order
    return best, len(by_setting)


def _group(coll: Collection, table: Table) -> tuple[dict[tuple, list[Run]], Counter]:
    """The runs of each (row, column), and counts of the runs left out, by reason."""
    groups: dict[tuple, list[Run]] = {}
    left, seen = Counter(), set()
    for run in coll.runs:
        if run.fingerprint in seen:  # same config and seed: the same numbers again
            left["duplicate"] += 1
            continue
        seen.add(run.fingerprint)
        if run.selection not in table.selections:
            left["selection"] += 1
        elif not finite(value(table, run)) or run.is_eval:
            left["metric"] += 1
        else:
            groups.setdefault(((run.method, run.depths), _column(run)), []).append(run)
            table.names[run.method] = run.method_name
    return groups, left


def split_settings(groups: dict[tuple, list[Run]], table: Table) -> dict[tuple, list[Run]]:
    """A cell is a setting: where a method's runs in one column differ in values no sweep searched (a debug run
    beside a full one, other epochs), each setting becomes a row of its own, labelled with those values."""
    rows: dict[tuple, list[tuple]] = {}
    for (row, col), runs in groups.items():
        rows.setdefault(row, []).append((col, runs))
    out: dict[tuple, list[Run]] = {}
    for (label, depths), cells in rows.items():
        keys = sorted({k for _, runs in cells for k in _varying([r.fixed for r in runs])})
        table.varying.update(keys)
        for col, runs in cells:
            for run in runs:
                named = label + _values_text(run.fixed, keys)
                out.setdefault(((named, depths), col), []).append(run)
                table.names[named] = run.method_name
    return out


def _varying(settings: list[dict]) -> set[str]:
    return {k for other in settings[1:] for k in differences(settings[0], other)}


def _values_text(fixed: dict, keys: list[str]) -> str:
    shown = [f"{k}={json.dumps(value_at(fixed, k))}" for k in keys[:4]]
    return f" [{', '.join(shown)}{f', +{len(keys) - 4} more' if len(keys) > 4 else ''}]" if keys else ""


def value(table: Table, run: Run) -> float | None:
    """The run's value of the table's metric: at its selected epoch (results.json), or at the last epoch."""
    return run.at_last_epoch(table.metric) if table.last_epoch else run.results.get(table.metric)


def is_fraction(metric: str) -> bool:
    """Whether a results key is a fraction shown as % (accuracies, separations), not a count or seconds."""
    return "acc" in metric or "separation" in metric


def build_table(
    coll: Collection, metric: str = "test/acc_unbiased", selection: str | list[str] = "val", last_epoch: bool = False
) -> Table:
    """Group the finished runs into cells of `metric` for runs whose checkpoints were chosen by `selection` (a
    protocol name, or several: their columns side by side); with `last_epoch`, each run's value at the last epoch
    of its phase (the per-epoch curves) instead of at the selected one."""
    selections = [SYNONYMS.get(s, s) for s in ([selection] if isinstance(selection, str) else selection)]
    table = Table(metric, selections, last_epoch)
    groups, left = _group(coll, table)
    for (row, col), runs in split_settings(groups, table).items():
        chosen, n_settings = _choose(runs)
        chosen = sorted(chosen, key=lambda r: str(r.results.get("seed")))  # values in seed order, wherever read
        scale = 100 if is_fraction(metric) else 1
        off = sorted({key for r in chosen for key in off_preset(r)})
        collapsed = sum(r.results.get("stage1/collapsed") is True for r in chosen)
        values = [scale * float(value(table, r)) for r in chosen]
        table.cells[row, col] = Cell(values, n_settings, off, collapsed=collapsed)
    table.rows = sorted({row for row, _ in table.cells})
    table.cols = sorted(
        {col for _, col in table.cells},
        key=lambda c: (selections.index(c[0]), c[1], c[2], -1 if c[3] is None else c[3], c[4]),
    )
    _notes(table, left, coll)
    return table


def _notes(table: Table, left: Counter, coll: Collection) -> None:
    where = ", ".join(f"{s} ({PROTOCOLS[s].about})" if s in PROTOCOLS else s for s in table.selections)
    unit = " (%)" if is_fraction(table.metric) else ""
    at = "; at the last epoch of the final phase (its curve), whatever epoch was selected" if table.last_epoch else ""
    table.notes.append(
        f"cells: {table.metric}{unit}, mean ± std over seeds (n runs); checkpoints selected on {where}{at}"
    )
    if any(BIAS_LABEL_MARK in label for label, _ in table.rows):
        table.notes.append(f"{BIAS_LABEL_MARK.strip()}: the method trains with bias labels")
    if table.varying:
        table.notes.append(
            f"[key=value]: runs of one method that differ in {', '.join(sorted(table.varying))} (values no sweep "
            "searched, such as a debug run's subset and epochs): each setting is a row of its own"
        )
    searched = sum(c.settings > 1 for c in table.cells.values())
    if searched:
        table.notes.append(
            f"{searched} cell(s) held several hyperparameter settings: each shows the setting with the best mean "
            f"objective (what its protocol lets a run read: validation numbers), never the best {table.metric}"
        )
    if any(c.collapsed for c in table.cells.values()):
        table.notes.append(
            "k collapsed: k of the cell's runs say their stage-1 deep expert collapsed (stage1/collapsed, read "
            "without labels); they are in the cell"
        )
    reasons = {
        "duplicate": "run(s) repeating another run's config and seed",
        "selection": "run(s) with another selection (use --selection)",
        "metric": f"run(s) without {table.metric}",
    }
    table.notes += [f"left out: {left[k]} {text}" for k, text in reasons.items() if left[k]]
    if coll.incomplete:
        table.notes.append(f"incomplete runs (no results.json): {len(coll.incomplete)}")
        table.notes += [f"  {coll.rel(path)}: {why}" for path, why in coll.incomplete]


def add_published(table: Table, path: Path = PUBLISHED) -> None:
    """Put the paper's numbers for the same method, dataset, ratio and metric beside our cells, where it has
    them (at the benchmark's severity); a note says where they come from and how they were selected."""
    pub = yaml.safe_load(path.read_text())
    table.published = {}
    for row in table.rows:
        paper_row = pub["methods"].get(table.names.get(row[0]))
        with_depths = f"{paper_row} ({', '.join(map(str, row[1]))})"  # rows the paper gives per depth pair
        for col in table.cols:
            _, dataset, severity, ratio, _ = col
            rows = pub["results"].get(dataset, {}).get(table.metric, {})
            at = pub["measured_at"].get(dataset, {})
            measured = list(row[1]) == at.get(paper_row, at.get("others"))  # the paper's architecture
            values = rows.get(with_depths) or (rows.get(paper_row) if measured else None) or {}
            value = values.get(ratio) if severity in ("", str(pub["severity"])) else None  # 1.0 finds the key 1
            if value is not None:
                table.published[row, col] = (
                    f"{value[0]:.2f} ± {value[1]:.2f}" if isinstance(value, list) else f"{value:.2f}"
                )
                cell = table.cells.get((row, col))
                if cell is not None and cell.off_preset:
                    cell.flagged = True
    table.notes.append(f"paper: {pub['source']}; {pub['selection']}")
    off = sorted({k for c in table.cells.values() if c.flagged for k in c.off_preset})
    if off:
        table.notes.append(f"{OFF_PRESET_MARK}: not the paper's data or schedule ({', '.join(off)}): not comparable")


def _cell_text(cell: Cell | None, pm: str = "±") -> str:
    if cell is None:
        return "-"
    n = f"n={len(cell.values)}" + (f", best of {cell.settings} settings" if cell.settings > 1 else "")
    n += f", {cell.collapsed} collapsed" if cell.collapsed else ""
    mark = f" {OFF_PRESET_MARK}" if cell.flagged else ""
    if cell.std is None:
        return f"{cell.mean:.2f} ({n}){mark}"
    return f"{cell.mean:.2f} {pm} {cell.std:.2f} ({n}){mark}"


def _grid(table: Table, pm: str = "±") -> tuple[list[str], list[list[str]]]:
    """Header and body cells: a `paper` column after each of ours when the published numbers are on."""
    head = ["method"]
    for col in table.cols:
        head += [table.col_label(col)] + (["paper"] if table.published is not None else [])
    body = []
    for row in table.rows:
        cells = [table.row_label(row)]
        for col in table.cols:
            cells.append(_cell_text(table.cells.get((row, col)), pm))
            if table.published is not None:
                cells.append(table.published.get((row, col), "-").replace("±", pm))
        body.append(cells)
    return head, body


def to_markdown(table: Table) -> str:
    """A GitHub-flavoured Markdown table followed by its notes."""
    head, body = _grid(table)
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines + [""] + table.notes) + "\n"


def _tex(text: str) -> str:
    return text.replace("\\", "\\textbackslash{}").replace("%", "\\%").replace("_", "\\_").replace("&", "\\&")


def to_latex(table: Table) -> str:
    """A booktabs tabular; the notes follow as LaTeX comments."""
    head, body = _grid(table, "$\\pm$")
    lines = ["\\begin{tabular}{l" + "c" * (len(head) - 1) + "}", "\\toprule", " & ".join(map(_tex, head)) + " \\\\"]
    lines.append("\\midrule")
    lines += [" & ".join([_tex(cells[0]), *cells[1:]]) + " \\\\" for cells in body]
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines + [f"% {note}" for note in table.notes]) + "\n"


def to_csv(table: Table) -> str:
    """One line per cell (tidy: easy to load with pandas); the notes are left to the caller."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["method", "depths", "selection", "dataset", "severity", "conflict_pct", "data_digest", "metric"]
        + ["mean", "std", "n", "settings", "paper"]
    )
    for row in table.rows:
        for col in table.cols:
            if (cell := table.cells.get((row, col))) is not None:
                std = "" if cell.std is None else f"{cell.std:.4f}"
                paper = (table.published or {}).get((row, col), "")
                w.writerow(
                    [row[0], " ".join(map(str, row[1])), *col, table.metric, f"{cell.mean:.4f}", std]
                    + [len(cell.values), cell.settings, paper]
                )
    return buf.getvalue()


FORMATS = {"md": to_markdown, "latex": to_latex, "csv": to_csv}


def runs_table(coll: Collection) -> tuple[list[str], list[list]]:
    """One row per run (trial, params, objective, key metrics): the W&B table of a sweep."""
    keys = ["val/acc_unbiased", "test/acc_unbiased", "test/acc_conflicting", "stage1/shallow/val/acc_conflicting"]
    keys += ["stage1/deep/val/acc_conflicting", "stage1/separation", "stage1/collapsed"]
    columns = ["run", "trial", "seed", "shallow", "deep", "equal_depth", "params", *keys]
    rows = []
    for run in coll.runs:
        params = json.dumps((run.config.get("trial") or {}).get("params") or {}, sort_keys=True)
        vals = [run.results.get(k) for k in keys]
        equal = run.pair[0] == run.pair[1]
        rows.append([coll.rel(run.path), run.trial, run.results.get("seed"), *run.pair, equal, params, *vals])
    return columns, rows
