"""`make equiv`'s comparison: two run directories are the same when their numbers are, whatever their times."""

import json

import equiv
import torch


def _run(folder, test_acc: float, weight: float, seconds: float) -> None:
    (folder / "checkpoints").mkdir(parents=True)
    results = {"test/acc": test_acc, "time/total_s": seconds, "config": {"seed": 0, "trial": {"study": str(seconds)}}}
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "stage1/time/epoch_s": seconds}) + "\n")
    ckpt = {"method": {"w": torch.tensor([weight])}, "elapsed_s": seconds, "meta": {"config": {"x": seconds}}}
    torch.save(ckpt, folder / "checkpoints" / "stage1_last.pt")


def test_runs_differ_only_where_their_numbers_do(tmp_path):
    _run(tmp_path / "a", 0.5, 1.0, seconds=3.0)
    _run(tmp_path / "b", 0.5, 1.0, seconds=4.0)  # slower, another study name: the same numbers
    assert equiv.differences(tmp_path / "a", tmp_path / "b") == []
    _run(tmp_path / "c", 0.5, 1.0 + 1e-7, seconds=3.0)  # one weight one ulp-ish off
    assert equiv.differences(tmp_path / "a", tmp_path / "c") == ["checkpoints/stage1_last.pt"]
    _run(tmp_path / "d", 0.51, 1.0, seconds=3.0)
    (tmp_path / "d" / "failed.json").write_text("{}")
    assert equiv.differences(tmp_path / "a", tmp_path / "d") == ["failed.json: only in BASE", "results.json"]
