"""Reading results: the sweep objective and the end-of-run summary table."""

import math

_COLS = (
    ("val", "acc_unbiased"),
    ("test", "acc_unbiased"),
    ("test", "acc_aligned"),
    ("test", "acc_conflicting"),
    ("test", "acc_worst_group"),
)


# the sweep objective of runs written before results.json recorded it: validation unbiased accuracy of the
# selected target (of the shallow expert after stage 1 alone)
LEGACY_OBJECTIVE_KEYS = ("val/acc_unbiased", "stage1/shallow/val/acc_unbiased")


def objective(results: dict) -> float:
    """The sweep objective of a run: results.json's `objective` (the key it was read from is `objective_key`,
    set by the selection protocol), or for older runs the validation unbiased accuracy of the final model."""
    if "objective" in results:
        return float(results["objective"])
    for key in LEGACY_OBJECTIVE_KEYS:
        if key in results:
            return float(results[key])
    return math.nan


def _rows(results: dict) -> list[str]:
    """Every `<stage>/<head>` with numbers in results, in order."""
    seen: dict[str, None] = {}
    for key in results:
        parts = key.split("/")
        if len(parts) == 4 and parts[2] in ("val", "test"):
            seen.setdefault(f"{parts[0]}/{parts[1]}")
    return list(seen)


def summary_table(results: dict) -> str:
    """A short text table of the selected models' accuracies (%)."""
    head = f"{'model':<16}" + "".join(f"{s + ' ' + m.removeprefix('acc_'):>22}" for s, m in _COLS)
    lines = [head, "-" * len(head)]
    for row in _rows(results):
        name = row.replace("/", " ")
        vals = [results.get(f"{row}/{s}/{m}") for s, m in _COLS]
        if all(v is None for v in vals):
            continue
        lines.append(f"{name:<16}" + "".join(f"{'-' if v is None else f'{100 * v:.2f}':>22}" for v in vals))
    if results.get("selection_oracle"):
        lines.append("selection=oracle: checkpoints were chosen on the test set")
    if "objective_key" in results:
        lines.append(f"objective ({results['objective_key']}, selection={results.get('selection')}): "
                     f"{100 * objective(results):.2f}")  # fmt: skip
    return "\n".join(lines)
