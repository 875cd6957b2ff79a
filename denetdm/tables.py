"""DomainBed-style tables: rows = method and depth pair, columns = dataset x severity x conflict ratio,
cells = mean +- std over seeds. Hyperparameters are chosen on validation, never on the metric shown."""

import csv
import io
import json
import statistics
from dataclasses import dataclass, field

from denetdm.report import OBJECTIVE_KEYS
from denetdm.runs import Collection, Run, finite


@dataclass
class Cell:
    """The runs of one row and column that share the chosen hyperparameter setting."""

    values: list[float]
    settings: int  # how many settings the cell chose from

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
    """A metric over rows and columns, with what was left out and why."""

    metric: str
    selection: str
    rows: list[tuple[str, int, int]] = field(default_factory=list)
    cols: list[tuple[str, str, float]] = field(default_factory=list)
    cells: dict[tuple, Cell] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _column(run: Run) -> tuple[str, str, float]:
    cfg = run.config
    return cfg["dataset"]["name"], str(cfg["severity"]["level"]), float(cfg["dataset"].get("conflict_pct", "nan"))


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


def build_table(coll: Collection, metric: str = "test/acc_unbiased", selection: str = "val") -> Table:
    """Group the finished runs into cells of `metric` for runs whose checkpoints were chosen by `selection`."""
    table = Table(metric, selection)
    groups: dict[tuple, list[Run]] = {}
    other_selection, no_metric, seen, duplicates = 0, 0, set(), 0
    for run in coll.runs:
        if run.fingerprint in seen:  # same config and seed: the same numbers again
            duplicates += 1
            continue
        seen.add(run.fingerprint)
        if run.results.get("selection") != selection:
            other_selection += 1
        elif not finite(run.results.get(metric)) or run.method == "eval":
            no_metric += 1
        else:
            groups.setdefault(((run.method, *run.pair), _column(run)), []).append(run)
    for (row, col), runs in groups.items():
        chosen, n_settings = _choose(runs)
        table.cells[row, col] = Cell([100 * float(r.results[metric]) for r in chosen], n_settings)
    table.rows = sorted({row for row, _ in table.cells})
    table.cols = sorted({col for _, col in table.cells})

    table.notes.append(f"cells: {metric} (%), mean ± std over seeds (n runs); checkpoints selected on {selection}")
    searched = sum(c.settings > 1 for c in table.cells.values())
    if searched:
        table.notes.append(
            f"{searched} cell(s) held several hyperparameter settings: each shows the setting with the best mean "
            f"{OBJECTIVE_KEYS[0]} (validation), never the best {metric}"
        )
    if duplicates:
        table.notes.append(f"left out: {duplicates} run(s) repeating another run's config and seed")
    if other_selection:
        table.notes.append(f"left out: {other_selection} run(s) with another selection (use --selection)")
    if no_metric:
        table.notes.append(f"left out: {no_metric} run(s) without {metric}")
    if coll.incomplete:
        table.notes.append(f"incomplete runs (no results.json): {len(coll.incomplete)}")
        table.notes += [f"  {coll.rel(path)}: {why}" for path, why in coll.incomplete]
    return table


def _row_label(row: tuple[str, int, int]) -> str:
    return f"{row[0]} ({row[1]}, {row[2]})"


def _col_label(col: tuple[str, str, float]) -> str:
    return f"{col[0]} sev{col[1]} {col[2]:g}%"


def _cell_text(cell: Cell | None, pm: str = "±") -> str:
    if cell is None:
        return "-"
    if cell.std is None:
        return f"{cell.mean:.2f} (n=1)"
    return f"{cell.mean:.2f} {pm} {cell.std:.2f} (n={len(cell.values)})"


def to_markdown(table: Table) -> str:
    """A GitHub-flavoured Markdown table followed by its notes."""
    head = ["method (shallow, deep)", *map(_col_label, table.cols)]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * len(table.cols) + "|"]
    for row in table.rows:
        cells = [_cell_text(table.cells.get((row, col))) for col in table.cols]
        lines.append("| " + " | ".join([_row_label(row), *cells]) + " |")
    return "\n".join(lines + [""] + table.notes) + "\n"


def _tex(text: str) -> str:
    return text.replace("\\", "\\textbackslash{}").replace("%", "\\%").replace("_", "\\_").replace("&", "\\&")


def to_latex(table: Table) -> str:
    """A booktabs tabular; the notes follow as LaTeX comments."""
    head = ["Method (shallow, deep)", *map(_col_label, table.cols)]
    lines = ["\\begin{tabular}{l" + "c" * len(table.cols) + "}", "\\toprule", " & ".join(map(_tex, head)) + " \\\\"]
    lines.append("\\midrule")
    for row in table.rows:
        cells = [_cell_text(table.cells.get((row, col)), "$\\pm$") for col in table.cols]
        lines.append(" & ".join([_tex(_row_label(row)), *cells]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines + [f"% {note}" for note in table.notes]) + "\n"


def to_csv(table: Table) -> str:
    """One line per cell (tidy: easy to load with pandas); the notes are left to the caller."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "shallow", "deep", "dataset", "severity", "conflict_pct", "metric", "selection"]
               + ["mean", "std", "n", "settings"])  # fmt: skip
    for row in table.rows:
        for col in table.cols:
            if (cell := table.cells.get((row, col))) is not None:
                std = "" if cell.std is None else f"{cell.std:.4f}"
                w.writerow([*row, *col, table.metric, table.selection, f"{cell.mean:.4f}", std, len(cell.values)]
                           + [cell.settings])  # fmt: skip
    return buf.getvalue()


FORMATS = {"md": to_markdown, "latex": to_latex, "csv": to_csv}


def runs_table(coll: Collection) -> tuple[list[str], list[list]]:
    """One row per run (trial, params, objective, key metrics): the W&B table of a sweep."""
    keys = ["val/acc_unbiased", "test/acc_unbiased", "test/acc_conflicting", "stage1/shallow/val/acc_conflicting"]
    keys.append("stage1/deep/val/acc_conflicting")
    columns = ["run", "trial", "seed", "shallow", "deep", "params", *keys]
    rows = []
    for run in coll.runs:
        params = json.dumps((run.config.get("trial") or {}).get("params") or {}, sort_keys=True)
        vals = [run.results.get(k) for k in keys]
        rows.append([coll.rel(run.path), run.trial, run.results.get("seed"), *run.pair, params, *vals])
    return columns, rows
