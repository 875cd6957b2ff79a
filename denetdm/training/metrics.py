"""Group accuracies over (target class, bias class) cells (docs/protocols.md §2)."""

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


def cell_accuracy(
    pred: torch.Tensor, y: torch.Tensor, b: torch.Tensor, num_classes: int, num_biases: int
) -> torch.Tensor:
    """(num_classes, num_biases) accuracy matrix; NaN where a cell has no sample."""
    cell = y * num_biases + b
    total = torch.bincount(cell, minlength=num_classes * num_biases).double()
    correct = torch.bincount(cell, weights=(pred == y).double(), minlength=num_classes * num_biases)
    acc = correct / total  # 0/0 -> NaN marks an empty cell
    return acc.view(num_classes, num_biases)


def group_metrics(
    pred: torch.Tensor, y: torch.Tensor, b: torch.Tensor, num_classes: int, num_biases: int
) -> dict[str, float]:
    """Unbiased (mean of cells), aligned (diagonal), conflicting (off-diagonal), worst-group and plain accuracy,
    the plain accuracy over bias-conflicting samples (what the BFFHQ papers report), the lowest per-class
    accuracy (which needs no bias label) and the entropy of the predicted classes (which needs no label at all)."""
    acc = cell_accuracy(pred, y, b, num_classes, num_biases)
    diag = torch.eye(num_classes, num_biases, dtype=torch.bool, device=acc.device)
    full = ~acc.isnan()
    out = torch.stack(
        [
            acc[full].mean(),
            acc[diag & full].mean(),
            acc[~diag & full].mean(),
            acc[full].min() if full.any() else acc.new_tensor(float("nan")),
            (pred == y).double().mean(),
            (pred == y)[y != b].double().mean() if (y != b).any() else acc.new_tensor(float("nan")),
            _worst_class(pred, y, num_classes).to(acc),
            pred_entropy(pred, num_classes).to(acc),
        ]
    )
    return dict(zip(METRICS, out.tolist()))


def _worst_class(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    total = torch.bincount(y, minlength=num_classes).double()
    correct = torch.bincount(y, weights=(pred == y).double(), minlength=num_classes)
    present = total > 0
    return (correct[present] / total[present]).min() if present.any() else total.new_tensor(float("nan"))


def pred_entropy(pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Entropy of the predicted-class histogram over log(num_classes): 1 when every class is predicted equally
    often, log(k)/log(num_classes) when k classes are; an expert that has collapsed onto a few classes shows here
    without any label (docs/results.md, the spread over seeds)."""
    p = torch.bincount(pred, minlength=num_classes).double() / max(len(pred), 1)
    h = -(p[p > 0] * p[p > 0].log()).sum()
    return h / torch.log(torch.tensor(float(num_classes), dtype=torch.double, device=p.device)) + 0.0  # not -0.0
