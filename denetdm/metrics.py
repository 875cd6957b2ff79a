"""Group accuracies over (target class, bias class) cells (docs/protocols.md §2)."""

import math

import torch

METRICS = (
    "acc_unbiased",
    "acc_aligned",
    "acc_conflicting",
    "acc_worst_group",
    "acc",
    "acc_conflicting_samples",
    "acc_worst_class",
    "pred_entropy",
)


def group_metrics(
    pred: torch.Tensor, y: torch.Tensor, b: torch.Tensor, num_classes: int, num_biases: int
) -> dict[str, float]:
    """Unbiased (mean of cells), aligned (diagonal), conflicting (off-diagonal), worst-group and plain accuracy,
    the plain accuracy over bias-conflicting samples (what the BFFHQ papers report), the lowest per-class
    accuracy (which needs no bias label) and the entropy of the predicted classes (which needs no label at all)."""
    return group_metrics_rows(pred[None], y[None], b[None], num_classes, num_biases)[0]


def group_metrics_rows(
    pred: torch.Tensor, y: torch.Tensor, b: torch.Tensor, num_classes: int, num_biases: int
) -> list[dict[str, float]]:
    """`group_metrics` of each row of (R, N) predictions with its own (R, N) labels: the rows' cell counts made on
    the device in three bincounts and read back in one copy (a stack's members and heads: one sync, not dozens)."""
    rows, cells = len(pred), num_classes * num_biases
    row = torch.arange(rows, device=pred.device)[:, None]
    cell = (row * cells + y * num_biases + b).flatten()
    total = torch.bincount(cell, minlength=rows * cells).double()
    correct = torch.bincount(cell, weights=(pred == y).flatten().double(), minlength=rows * cells)
    hist = torch.bincount((row * num_classes + pred).flatten(), minlength=rows * num_classes).double()
    counts = torch.cat([correct.view(rows, cells), total.view(rows, cells), hist.view(rows, num_classes)], 1).cpu()
    return [_from_counts(r, num_classes, num_biases) for r in counts]


def _from_counts(counts: torch.Tensor, num_classes: int, num_biases: int) -> dict[str, float]:
    """One row's metrics from its correct and total counts per (class, bias) cell and its predicted classes."""
    shape, cells = (num_classes, num_biases), num_classes * num_biases
    correct, total = counts[:cells].view(shape), counts[cells : 2 * cells].view(shape)
    acc = correct / total  # 0/0 -> NaN marks an empty cell
    diag = torch.eye(num_classes, num_biases, dtype=torch.bool)
    full, nan = ~acc.isnan(), acc.new_tensor(float("nan"))
    by_class = correct.sum(1) / total.sum(1)  # NaN for a class with no sample
    out = torch.stack(
        [
            acc[full].mean(),
            acc[diag & full].mean(),
            acc[~diag & full].mean(),
            acc[full].min() if full.any() else nan,
            correct.sum() / total.sum(),
            correct[~diag].sum() / total[~diag].sum(),  # y != b; NaN without such a sample
            by_class[~by_class.isnan()].min() if full.any() else nan,
            pred_entropy(counts[2 * cells :]),
        ]
    )
    return dict(zip(METRICS, out.tolist()))


def pred_entropy(hist: torch.Tensor) -> torch.Tensor:
    """Entropy of the predicted-class histogram over log(num_classes): 1 when every class is predicted equally
    often, log(k)/log(num_classes) when k classes are; an expert that has collapsed onto a few classes shows here
    without any label (docs/results.md, the spread over seeds)."""
    p = hist / max(hist.sum().item(), 1)
    h = -(p[p > 0] * p[p > 0].log()).sum()
    return h / math.log(len(hist)) + 0.0  # not -0.0
