"""Reading results: the sweep objective and the end-of-run summary table."""

import math

_COLS = (
    ("val", "acc_unbiased"),
    ("test", "acc_unbiased"),
    ("test", "acc_aligned"),
    ("test", "acc_conflicting"),
    ("test", "acc_worst_group"),
)


def objective(results: dict) -> float:
    """The sweep objective of a run: results.json's `objective` (read from `objective_key`, which the selection
    protocol sets); NaN when it has none."""
    return float(results.get("objective", math.nan))


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
        value, final = objective(results), (results.get("config") or {}).get("method", {}).get("final") or {}
        text = (
            f"{100 * value:.2f}"
            if math.isfinite(value)
            else (f"none: this run did not train the final model ({final.get('phase')}/{final.get('head')})")
        )
        lines.append(f"objective ({results['objective_key']}, selection={results.get('selection')}): {text}")
    return "\n".join(lines)
