"""Reading results: the sweep objective and the end-of-run summary table."""

import math

_ROWS = (
    ("stage1 shallow", "stage1/shallow/{split}/{m}"),
    ("stage1 deep", "stage1/deep/{split}/{m}"),
    ("stage1 poe", "stage1/poe/{split}/{m}"),
    ("stage2 target", "stage2/target/{split}/{m}"),
)
_COLS = (
    ("val", "acc_unbiased"),
    ("test", "acc_unbiased"),
    ("test", "acc_aligned"),
    ("test", "acc_conflicting"),
    ("test", "acc_worst_group"),
)


# the sweep objective: validation unbiased accuracy of the selected target (of the shallow expert after stage 1)
OBJECTIVE_KEYS = ("val/acc_unbiased", "stage1/shallow/val/acc_unbiased")


def objective(results: dict) -> float:
    """Validation unbiased accuracy of the selected target model (of the shallow expert after stage 1 alone)."""
    for key in OBJECTIVE_KEYS:
        if key in results:
            return float(results[key])
    return math.nan


def summary_table(results: dict) -> str:
    """A short text table of the selected models' accuracies (%)."""
    head = f"{'model':<16}" + "".join(f"{s + ' ' + m.removeprefix('acc_'):>22}" for s, m in _COLS)
    lines = [head, "-" * len(head)]
    for name, pattern in _ROWS:
        vals = [results.get(pattern.format(split=s, m=m)) for s, m in _COLS]
        if all(v is None for v in vals):
            continue
        lines.append(f"{name:<16}" + "".join(f"{'-' if v is None else f'{100 * v:.2f}':>22}" for v in vals))
    if results.get("selection_oracle"):
        lines.append("selection=test: checkpoints were chosen on the test set (oracle)")
    return "\n".join(lines)
