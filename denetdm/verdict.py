"""Whether stage 1's deep expert collapsed: the label-free rule every run applies, and how well it does.

A collapsed deep expert answers with few classes, so the entropy of its predicted classes on validation images
(`pred_entropy`, which reads no label) falls well below the shallow expert's. The shallow expert then takes the bias,
and stage 2 distils a biased teacher (docs/results.md, the depth pairs). Torch-free: sweep.py reads it too.
"""

from collections.abc import Iterable

COLLAPSED = 0.9  # deep pred_entropy below this share of the shallow one's: collapsed (fixed before it was measured)
MIN_EPOCHS = 3  # a stage 1 shorter than this is not judged (a debug run): its experts have barely begun
# What the detector is measured against, with bias labels (never read by the rule): a deep expert right on fewer
# than this share of the bias-aligned test images has failed to take the bias (healthy ones: 0.94-1.00)
TRUTH_ALIGNED = 0.8


def collapse_verdict(deep: float, shallow: float, epochs: int, phase: str = "stage1") -> dict:
    """`<phase>/collapsed` (null with a note when the stage is too short to judge) and the signal it is decided
    from, `<phase>/collapse_signal`: the deep expert's pred_entropy over the shallow one's."""
    signal = deep / shallow if shallow > 0 else float(deep > 0)  # both on one class: collapsed
    out = {f"{phase}/collapse_signal": signal, f"{phase}/collapsed": None}
    if epochs < MIN_EPOCHS:
        return out | {f"{phase}/collapse_note": f"not judged: {epochs} epoch(s), fewer than {MIN_EPOCHS}"}
    return out | {f"{phase}/collapsed": bool(signal < COLLAPSED)}


def judge_record(results: dict, epochs: Iterable[dict]) -> dict | None:
    """The rule applied to a finished run (results.json or a store record) at its selected stage-1 epoch, from its
    per-epoch records, and the truth it is measured against; None for a run without stage 1 or those curves."""
    selected = results.get("stage1/selected_epoch")
    rows = [e for e in epochs if e.get("stage") == "stage1"]
    row = next((e for e in rows if e.get("epoch") == selected), None)
    keys = ("stage1/deep/val/pred_entropy", "stage1/shallow/val/pred_entropy")
    if row is None or any(k not in row for k in keys) or "stage1/deep/test/acc_aligned" not in results:
        return None
    verdict = collapse_verdict(row[keys[0]], row[keys[1]], max(e["epoch"] for e in rows))
    return verdict | {"truth": results["stage1/deep/test/acc_aligned"] < TRUTH_ALIGNED}
