"""Group metrics on hand-built cases (docs/protocols.md §2)."""

import math

import pytest
import torch

from denetdm.metrics import group_metrics, group_metrics_rows


def test_hand_built_two_by_two():
    # cells (y, b): (0,0) x2 both right, (0,1) x1 wrong, (1,0) x2 one right, (1,1) x1 right
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    b = torch.tensor([0, 0, 1, 0, 0, 1])
    pred = torch.tensor([0, 0, 1, 1, 0, 1])
    m = group_metrics(pred, y, b, 2, 2)
    assert m["acc_unbiased"] == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert m["acc_aligned"] == pytest.approx((1 + 1) / 2)
    assert m["acc_conflicting"] == pytest.approx((0 + 0.5) / 2)
    assert m["acc_worst_group"] == 0.0
    assert m["acc"] == pytest.approx(4 / 6)
    assert m["acc_conflicting_samples"] == pytest.approx(1 / 3)  # (0,1) wrong, (1,0) one of two right


def test_empty_cells_are_ignored_not_counted_as_zero():
    y = torch.tensor([0, 1, 2])
    b = torch.tensor([0, 1, 0])
    pred = torch.tensor([0, 1, 2])
    m = group_metrics(pred, y, b, 3, 3)  # cells (0,0), (1,1), (2,0) hold a sample each, all right
    assert m["acc_unbiased"] == 1.0 and m["acc_worst_group"] == 1.0 and m["acc_conflicting"] == 1.0


def test_unbiased_differs_from_sample_accuracy_under_imbalance():
    # 98 aligned samples all right, 2 conflicting all wrong
    y = torch.tensor([0] * 49 + [1] * 49 + [0, 1])
    b = torch.tensor([0] * 49 + [1] * 49 + [1, 0])
    pred = torch.tensor([0] * 49 + [1] * 49 + [1, 0])
    m = group_metrics(pred, y, b, 2, 2)
    assert m["acc"] == pytest.approx(0.98)
    assert m["acc_unbiased"] == pytest.approx(0.5)
    assert m["acc_conflicting"] == 0.0 and m["acc_aligned"] == 1.0


def test_pred_entropy_reads_how_many_classes_are_predicted_and_no_label():
    y = torch.arange(10).repeat(10)
    m = group_metrics(y, y, y, 10, 10)
    assert m["pred_entropy"] == pytest.approx(1.0)  # every class equally often
    collapsed = group_metrics(y % 2, y, y, 10, 10)
    assert collapsed["pred_entropy"] == pytest.approx(math.log(2) / math.log(10))  # two classes
    labels_moved = group_metrics(y % 2, (y + 3) % 10, torch.zeros_like(y), 10, 10)
    assert labels_moved["pred_entropy"] == collapsed["pred_entropy"]  # the labels do not enter
    assert group_metrics(torch.zeros(4, dtype=torch.long), y[:4], y[:4], 10, 10)["pred_entropy"] == 0.0


def test_rows_with_their_own_labels_give_each_row_its_own_metrics():
    gen = torch.Generator().manual_seed(0)
    y, b = torch.randint(0, 5, (6, 300), generator=gen), torch.randint(0, 4, (6, 300), generator=gen)
    pred = torch.where(torch.rand(6, 300, generator=gen) < 0.7, y, torch.randint(0, 5, (6, 300), generator=gen))
    rows = group_metrics_rows(pred, y, b, 5, 4)
    for r in range(6):
        one = group_metrics(pred[r], y[r], b[r], 5, 4)
        assert rows[r] == one  # the same numbers, bit for bit
        assert one["acc"] == (pred[r] == y[r]).double().mean().item()
        hits = (pred[r] == y[r])[y[r] != b[r]]
        assert one["acc_conflicting_samples"] == pytest.approx(hits.double().mean().item(), abs=1e-15)
    assert rows[0] != rows[1]
    assert math.isnan(group_metrics(y[0] % 4, y[0] % 4, y[0] % 4, 5, 4)["acc_conflicting_samples"])  # no y != b
