"""The training loop on its own: non-finite losses, selection, record truncation, the dataset cache."""

import pytest
import torch

from denetdm.data.splits import BiasedData, Split
from denetdm.data.synthetic import SyntheticShapes
from denetdm.errors import TrainingError
from denetdm.files.jsonlines import JsonLines
from denetdm.methods.base import Method
from denetdm.selection import protocol
from denetdm.training.loop import Trainer
from denetdm.training.phases import Schedule


class Constant(Method):
    """Predicts a fixed class; its 'loss' is whatever it is told."""

    def __init__(self, loss: float) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.loss = loss
        self.optimizer = torch.optim.SGD(self.parameters(), lr=0.1)

    def update(self, x, y, idx):
        return {"loss": torch.tensor(self.loss)}

    def predict(self, x):
        return {"only": torch.zeros(len(x), 2).index_fill_(1, torch.tensor([0]), 1.0) + self.w}


def tiny_data() -> BiasedData:
    y = torch.tensor([0, 0, 1, 1] * 4)
    split = Split(torch.rand(16, 3), y, y.flip(0))
    return BiasedData("tiny", split, split, split, 2, 2)


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    trainer = Trainer(tmp_path, progress=False)
    with pytest.raises(TrainingError, match="epoch 1: the training loss is nan .not finite.; lower experts.lr") as e:
        trainer.fit("stage1", Constant(float("nan")), tiny_data(), Schedule(3, 4, "only/acc", 0, source="experts"), {})
    assert "No epoch of stage1 was saved yet" in str(e.value)  # epoch 1: no checkpoint to name


class Growing(Constant):
    """A loss that is finite but grows tenfold each epoch (a learning rate far too high)."""

    def on_epoch(self):
        self.loss *= 10


def test_a_diverging_loss_stops_at_max_loss_naming_the_saved_epochs(tmp_path):
    method = Growing(50.0)  # 50, 500, 5000, 5e4: epoch 4 crosses the bound
    trainer = Trainer(tmp_path, progress=False, max_loss=1e4)
    trainer.recorder.on_epoch = lambda *a: method.on_epoch()
    with pytest.raises(TrainingError, match=r"epoch 4: the training loss is 5e\+04, above max_loss=10000: it diverges"):
        trainer.fit("stage1", method, tiny_data(), Schedule(5, 4, "only/acc", 0, source="experts"), {})
    assert trainer.recorder.checkpoint_path("stage1", "last").exists()  # the message names it: epochs 1-3
    with pytest.raises(TrainingError, match="No epoch of stage1 was saved yet"):
        Trainer(tmp_path / "b", progress=False, max_loss=10.0).fit(
            "stage1", Growing(50.0), tiny_data(), Schedule(2, 4, "only/acc", 0), {}
        )
    unbounded = Trainer(tmp_path / "c", progress=False, max_loss=None)  # max_loss=null: only non-finite stops
    unbounded.fit("stage1", Growing(5e5), tiny_data(), Schedule(2, 4, "only/acc", 0), {})


def test_selection_last_keeps_the_final_epoch(tmp_path):
    result = Trainer(tmp_path, protocol=protocol("last"), progress=False).fit(
        "stage1", Constant(0.5), tiny_data(), Schedule(3, 4, "only/acc", 0), {}
    )
    assert result.selected_epoch == 3 and len(Trainer(tmp_path).recorder.records.read()) == 3
    assert set(result.metrics) >= {"stage1/only/val/acc", "stage1/only/test/acc_unbiased"}


def test_truncate_drops_only_later_records_of_that_stage(tmp_path):
    log = JsonLines(tmp_path / "m.jsonl")
    for stage, epoch in [("stage1", 1), ("stage1", 2), ("stage2", 1), ("stage1", 3)]:
        log.append({"stage": stage, "epoch": epoch})
    with open(log.path, "a") as f:
        f.write('{"stage": "stage1", "ep')  # a line cut by a crash
    log.truncate("stage1", 1)
    assert [(r["stage"], r["epoch"]) for r in log.read()] == [("stage1", 1), ("stage2", 1)]


@pytest.mark.slow
def test_damaged_cache_is_regenerated_and_the_data_root_is_untouched(tmp_path, caplog):
    kw = dict(name="synthetic", train_size=300, test_size=100, severity=4, conflict_pct=5, val_size=50, seed=0)
    first = SyntheticShapes(cache_dir=str(tmp_path / "cache"), **kw).load()
    (path,) = (tmp_path / "cache").glob("synthetic-*.pt")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip a byte inside the tensors
    path.write_bytes(bytes(data))
    again = SyntheticShapes(cache_dir=str(tmp_path / "cache"), **kw).load()
    assert "regenerating" in caplog.text
    assert torch.equal(again.train.x, first.train.x)
    other = SyntheticShapes(cache_dir=str(tmp_path / "cache"), **{**kw, "severity": 3}).load()
    assert len(list((tmp_path / "cache").glob("synthetic-*.pt"))) == 2  # a new key per parameter set
    assert not torch.equal(other.train.x, first.train.x)


class Counting(Constant):
    """Counts the batches and samples it is trained on."""

    def __init__(self) -> None:
        super().__init__(0.5)
        self.sizes: list[int] = []

    def update(self, x, y, idx):
        self.sizes.append(len(x))
        return super().update(x, y, idx)


def test_drop_last_drops_only_the_last_partial_batch(tmp_path):
    kept, dropped = Counting(), Counting()
    Trainer(tmp_path / "a", progress=False).fit("stage1", kept, tiny_data(), Schedule(2, 5, "only/acc", 0), {})
    sched = Schedule(2, 5, "only/acc", 0, drop_last=True)
    Trainer(tmp_path / "b", progress=False).fit("stage1", dropped, tiny_data(), sched, {})
    assert kept.sizes == [5, 5, 5, 1] * 2  # 16 samples in batches of 5
    assert dropped.sizes == [5, 5, 5] * 2


def test_drop_last_with_a_batch_larger_than_the_data_is_one_clear_error(tmp_path):
    import pytest

    from denetdm.errors import ConfigError

    with pytest.raises(ConfigError, match="experts.drop_last=true drops every batch.*16 training images"):
        Trainer(tmp_path, progress=False).fit(
            "stage1", Counting(), tiny_data(), Schedule(2, 32, "only/acc", 0, drop_last=True, source="experts"), {}
        )
    with pytest.raises(ConfigError, match="experts.drop_last must be true or false"):
        Schedule(2, 4, "only/acc", 0, drop_last="yes", source="experts").check()


def test_sweep_jobs_take_one_gpu_each_round_robin(monkeypatch):
    from denetdm.training.plan import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)  # a faked 3-GPU machine
    assert [str(resolve_device("auto", slot)) for slot in range(5)] == [
        "cuda:0",
        "cuda:1",
        "cuda:2",
        "cuda:0",
        "cuda:1",
    ]
    assert str(resolve_device("cuda", 4)) == "cuda:1" and str(resolve_device("cuda:2", 4)) == "cuda:2"  # explicit
    assert str(resolve_device("auto")) == "cuda" and str(resolve_device("cpu", 4)) == "cpu"  # not a sweep job
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert str(resolve_device("auto", 4)) == "cuda"


def test_background_checkpoints_hold_the_values_of_when_they_were_saved_and_report_write_errors(tmp_path):
    from denetdm.errors import CheckpointError
    from denetdm.training.checkpoint import CheckpointWriter, load_checkpoint

    writer, w = CheckpointWriter(), torch.arange(6.0)
    writer.save({"kind": "stage1", "method": {"w": w}}, tmp_path / "a.pt", "checkpoint", background=True)
    w.add_(100)  # training goes on while the file is written
    writer.flush()
    assert torch.equal(load_checkpoint(tmp_path / "a.pt")["method"]["w"], torch.arange(6.0))
    (tmp_path / "file").write_text("")
    writer.save({"kind": "stage1"}, tmp_path / "file" / "b.pt", "checkpoint", background=True)  # not a folder
    with pytest.raises(CheckpointError, match="could not write the checkpoint"):
        writer.flush()


def test_background_writes_run_in_the_order_queued_and_a_record_write_error_names_the_file(tmp_path):
    import time

    from denetdm.errors import WriteError
    from denetdm.reporting.loggers import NullLogger
    from denetdm.training.checkpoint import CheckpointWriter
    from denetdm.training.recorder import Recorder

    writer, done = CheckpointWriter(), []
    writer.call(lambda: (time.sleep(0.2), done.append("record")), background=True)  # a slow fsync
    writer.save({"kind": "stage1"}, tmp_path / "a.pt", "checkpoint", background=True)
    writer.call(lambda: done.append("after" if (tmp_path / "a.pt").exists() else "before"), background=True)
    assert done == []  # queued: the caller went on
    writer.flush()
    assert done == ["record", "after"]
    (tmp_path / "run").write_text("")  # the run directory is a file: metrics.jsonl cannot be written
    recorder = Recorder(tmp_path / "run", NullLogger(), protocol("val"), "acc")
    recorder.writer.call(recorder.append, "stage1", {"stage": "stage1", "epoch": 1}, background=True)
    with pytest.raises(WriteError, match="could not write .*metrics.jsonl"):
        recorder.writer.flush()


def test_each_epochs_line_gives_accuracies_in_percent_and_the_time_left(tmp_path, caplog):
    import logging
    import re

    from denetdm.training.pipeline import train
    from denetdm.training.recorder import duration

    from conftest import TINY, compose_cfg

    caplog.set_level(logging.INFO)
    train(compose_cfg([*TINY, "experts.epochs=3", "target.epochs=1"]), tmp_path / "r")
    lines = [r.getMessage() for r in caplog.records if " epoch " in r.getMessage()]
    assert re.search(r"^stage1 epoch 1/3 .*shallow/val/acc_conflicting \d+\.\d\d % .*; stage1 \d+ s left\)$", lines[0])
    assert lines[2].endswith("; stage1 done)") and lines[3].endswith("; stage2 done)")
    assert [duration(s) for s in (12, 600, 12_000)] == ["12 s", "10 min", "3 h 20 min"]


@pytest.mark.parametrize("views", [0, 1, 2])
def test_a_step_gets_the_views_of_its_batch_that_its_method_asks_for(views, tmp_path):
    from dataclasses import replace

    from denetdm.data.augment import views as batch_views

    class Seeing(Constant):
        """Keeps the inputs of its steps."""

        def update(self, x, y, idx):
            self.seen.append((x, idx))
            return super().update(x, y, idx)

    Seeing.views = views
    method, data = Seeing(0.5), replace(tiny_data(), augment=lambda x, gen: x + torch.rand(x.shape, generator=gen))
    method.seen = []
    Trainer(tmp_path, progress=False).fit("stage1", method, data, Schedule(1, 8, "only/acc", 0), {})
    for x, idx in method.seen:
        stored = data.train.x[idx]
        if views == 0:
            assert torch.equal(x, stored)
        elif views == 1:
            assert x.shape == stored.shape and not torch.equal(x, stored)
        else:  # two views of the same images, each augmented on its own
            assert isinstance(x, tuple) and not torch.equal(x[0], x[1]) and not torch.equal(x[0], stored)
    assert batch_views(data.train.x, None, torch.Generator(), 2) == (data.train.x, data.train.x)  # no augmentation


def test_a_method_with_two_views_is_neither_stacked_nor_captured():
    with pytest.raises(TypeError, match="views"):
        type("Paired", (Constant,), {"views": 2, "capturable": True})
