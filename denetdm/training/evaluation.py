"""Evaluation: every head's group metrics on the evaluation splits, keyed `<phase>/<head>/<split>/<metric>`.

Every number a run records has that key layout (training losses `<phase>/train/<loss>`, wall times
`<phase>/time/<what>`), in metrics.jsonl, in W&B and in results.json alike.
"""

import torch

from denetdm.data.splits import BiasedData, Split
from denetdm.methods.base import Method
from denetdm.metrics import group_metrics_rows


def metric_key(stage: str, head: str, split: str, metric: str) -> str:
    """The one key layout of every recorded number: `<stage>/<head>/<split>/<metric>`."""
    return f"{stage}/{head}/{split}/{metric}"


@torch.no_grad()
def evaluate(
    method: Method, split: Split, num_classes: int, num_biases: int, batch_size: int = 4096
) -> dict[str, dict[str, float]]:
    """Group metrics of every head of `method` on `split`: {head: {metric: value}}."""
    was_training = method.training
    method.eval()
    preds: dict[str, list[torch.Tensor]] = {}
    for x, _, _ in split.batches(batch_size):
        for head, logits in method.predict(x).items():
            preds.setdefault(head, []).append(logits.argmax(1))
    method.train(was_training)
    one = {head: torch.cat(p)[None] for head, p in preds.items()}
    return head_metrics(one, split.y[None], split.b[None], num_classes, num_biases)[0]


def head_metrics(
    preds: dict[str, torch.Tensor], y: torch.Tensor, b: torch.Tensor, num_classes: int, num_biases: int
) -> list[dict[str, dict[str, float]]]:
    """Group metrics of each head's (K, N) predicted classes for K members with (K, N) labels, read back at once:
    per member {head: {metric: value}}."""
    heads, k = list(preds), len(y)
    flat = torch.cat([preds[h] for h in heads])
    rows = group_metrics_rows(flat, y.repeat(len(heads), 1), b.repeat(len(heads), 1), num_classes, num_biases)
    return [{h: rows[i * k + m] for i, h in enumerate(heads)} for m in range(k)]


def keyed(stage: str, split_name: str, per_head: dict[str, dict[str, float]]) -> dict[str, float]:
    """{head: {metric: value}} of one split as `<stage>/<head>/<split>/<metric>` keys."""
    return {metric_key(stage, h, split_name, m): v for h, metrics in per_head.items() for m, v in metrics.items()}


def evaluate_all(method: Method, data: BiasedData, stage: str) -> dict[str, float]:
    """`evaluate` on every evaluation split, keyed `<stage>/<head>/<split>/<metric>`."""
    out: dict[str, float] = {}
    for name, split in data.splits().items():
        out |= keyed(stage, name, evaluate(method, split, data.num_classes, data.num_biases))
    return out
