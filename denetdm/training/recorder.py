"""A run's records: metrics.jsonl and the logger, each phase's resumable and selected checkpoints, and the choice
of the selected epoch by the run's protocol. The loop (denetdm.training.loop) hands it every finished epoch."""

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from denetdm.errors import CheckpointError, ConfigError, WriteError
from denetdm.files.jsonlines import JsonLines
from denetdm.fingerprint import differences
from denetdm.methods.base import Method
from denetdm.reporting.loggers import NullLogger
from denetdm.selection import Protocol
from denetdm.training.checkpoint import CheckpointWriter, load_checkpoint, on_host, save_checkpoint
from denetdm.training.evaluation import metric_key
from denetdm.training.phases import Schedule

if TYPE_CHECKING:
    from denetdm.training.loop import Fit

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    """What a finished stage hands on: the selected epoch, its metrics and the stage's wall time."""

    selected_epoch: int
    metrics: dict[str, float]
    elapsed_s: float


class Recorder:
    """A run's records: its metrics.jsonl and logger, each stage's resumable and selected checkpoints, and the
    selection of a checkpoint by the run's protocol."""

    def __init__(self, run_dir: Path, logger: NullLogger, protocol: Protocol, label_free_metric: str) -> None:
        self.run_dir, self.ckpt_dir = run_dir, run_dir / "checkpoints"
        self.logger, self.protocol, self.label_free_metric = logger, protocol, label_free_metric
        self.records = JsonLines(run_dir / "metrics.jsonl")
        self.writer = CheckpointWriter()  # a GPU run's checkpoints are written while the next epoch trains
        self.on_epoch = None  # called with (stage, epoch, record) after each epoch's checkpoint (sweep pruning)

    def checkpoint_path(self, stage: str, which: str) -> Path:
        """Path of a stage's `last` or `selected` checkpoint."""
        return self.ckpt_dir / f"{stage}_{which}.pt"

    def saved_so_far(self, stage: str) -> str:
        """What a rerun continues from, for an error message (never a file that does not exist)."""
        path = self.checkpoint_path(stage, "last")
        if path.exists():
            return f"The epochs before it are saved in {path}; a rerun continues after them."
        return f"No epoch of {stage} was saved yet; a rerun starts it over."

    def restore(self, stage: str, method: Method, gen: torch.Generator, meta: dict, resume: bool) -> dict:
        """The loop state after the last saved epoch (method, optimizer and batch order restored), or a fresh one."""
        state = {"epoch": 0, "best_epoch": 0, "best_score": -math.inf, "best_metrics": {}, "elapsed_s": 0.0}
        state["best_method"] = None  # the selected epoch's weights, kept in every `last` checkpoint
        last, previous = self.checkpoint_path(stage, "last"), self.checkpoint_path(stage, "previous")
        ckpt = load_last(stage, last, previous) if resume else None
        if ckpt is None:
            if self.records.path.exists():
                self.records.truncate(stage, -1)  # a fresh start of this stage replaces any earlier records of it
            return state
        _check_same_config(ckpt.get("meta", {}).get("config"), meta.get("config"), last)
        method.load_state_dict(ckpt["method"])
        if ckpt.get("optimizer") is not None and method.optimizer is not None:
            method.optimizer.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["generator"])
        state = {k: ckpt[k] for k in state}
        self.records.truncate(stage, state["epoch"])
        self._check_selected(stage, state, meta)
        log.info("%s: resuming after epoch %d", stage, state["epoch"])
        return state

    def _check_selected(self, stage: str, state: dict, meta: dict) -> None:
        """Make the `selected` file hold the epoch the state selected (a kill between the two writes of an epoch,
        or a fall-back to the previous generation, can leave it at another one)."""
        path = self.checkpoint_path(stage, "selected")
        if state["best_epoch"] == 0:  # no epoch selected yet (a non-finite score)
            return
        try:
            if load_checkpoint(path, f"{stage} selected checkpoint")["epoch"] == state["best_epoch"]:
                return
        except CheckpointError:
            pass
        ckpt = {"kind": stage, "meta": meta, "epoch": state["best_epoch"], "method": state["best_method"]}
        save_checkpoint(ckpt, path, f"{stage} selected checkpoint")
        log.info("%s: %s rewritten with the selected epoch %d", stage, path, state["best_epoch"])

    def selection_key(self, stage: str, schedule: Schedule) -> str | None:
        """The metric a stage's checkpoint is chosen by under its protocol (None: the last epoch)."""
        return (schedule.selection or self.protocol).key(stage, schedule.select, self.label_free_metric)

    def record(self, fit: "Fit", epoch: int, record: dict, metrics: dict[str, float]) -> None:
        """Append an epoch's record, log it, keep its checkpoint if selection prefers it, save the last one."""
        # a GPU trains on while a thread writes; on a CPU the writes would compete with training for the cores
        background = any(p.is_cuda for p in fit.method.parameters())
        self.writer.call(self.append, fit.stage, record, background=background)
        self.logger.log(fit.stage, epoch, record)
        self._select_and_save(fit, epoch, metrics, background)
        report(fit.stage, epoch, fit.schedule, record, fit.state["elapsed_s"])
        if self.on_epoch is not None:
            self.on_epoch(fit.stage, epoch, record)

    def append(self, stage: str, record: dict) -> None:
        """Append a record to metrics.jsonl; a write error is one line naming what a rerun continues from."""
        try:
            self.records.append(record)
        except OSError as e:
            raise WriteError(
                f"could not write {self.records.path} ({e.strerror or e}): free space (or fix the folder's "
                f"permissions) and run the same command again. {self.saved_so_far(stage)}"
            ) from None

    def _select_and_save(self, fit: "Fit", epoch: int, metrics: dict[str, float], background: bool) -> None:
        stage, method, state = fit.stage, fit.method, fit.state
        key = self.selection_key(stage, fit.schedule)
        if key is not None and key not in metrics:
            source = fit.schedule.source
            raise ConfigError(f"{stage}: selection needs {key}, which no evaluation gave; check {source}.select")
        score = epoch if key is None else metrics[key]
        better = score > state["best_score"]
        if better:  # a copy: the next epochs change the method's tensors in place
            best = on_host(method.state_dict(), copy=True)
            state.update(best_epoch=epoch, best_score=score, best_metrics=metrics, best_method=best)
        state["epoch"] = epoch
        optimizer = method.optimizer.state_dict() if method.optimizer is not None else None
        ckpt = {"kind": stage, "meta": fit.meta, "method": method.state_dict(), "optimizer": optimizer}
        ckpt |= {"generator": fit.gen.get_state(), **state}
        last, previous = self.checkpoint_path(stage, "last"), self.checkpoint_path(stage, "previous")
        self.writer.save(ckpt, last, f"{stage} checkpoint", background, previous)
        if better:  # after `last`, which holds the same weights: a kill between the two is repaired on resume
            ckpt = {"kind": stage, "meta": fit.meta, "epoch": epoch, "method": state["best_method"]}
            self.writer.save(ckpt, self.checkpoint_path(stage, "selected"), f"{stage} selected checkpoint", background)

    def finish(self, fit: "Fit") -> StageResult:
        """Load the selected checkpoint into the method; the stage's result."""
        if fit.state["best_epoch"] == 0:
            raise CheckpointError(f"{fit.stage}: no epoch was trained; set {fit.stage}.epochs >= 1")
        self.writer.flush()
        best = load_checkpoint(self.checkpoint_path(fit.stage, "selected"), f"{fit.stage} selected checkpoint")
        fit.method.load_state_dict(best["method"])
        return StageResult(fit.state["best_epoch"], fit.state["best_metrics"], fit.state["elapsed_s"])


def report(stage: str, epoch: int, schedule: Schedule, record: dict, elapsed_s: float) -> None:
    """One log line per epoch: the loss, the selection metric in % (as tables show it), the time left."""
    head, metric = schedule.select.split("/")
    loss = f"{stage}/train/loss"
    text = " ".join(
        [f"{loss} {record[loss]:.4f}"] * (loss in record)
        + [
            f"{k} {100 * record[k]:.2f} %"
            for s in ("val", "test")
            if (k := metric_key(stage, head, s, metric)) in record
        ]
    )
    left = elapsed_s / epoch * (schedule.epochs - epoch)  # this stage's mean epoch so far, resumed ones included
    log.info(
        "%s epoch %d/%d %s (%.1f s; %s)",
        stage,
        epoch,
        schedule.epochs,
        text,
        record[f"{stage}/time/epoch_s"],
        f"{stage} {duration(left)} left" if left else f"{stage} done",
    )


def duration(seconds: float) -> str:
    """A time span as a person reads it: 45 s, 12 min, 3 h 20 min."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def load_last(stage: str, last: Path, previous: Path) -> dict | None:
    """The newest whole `last` checkpoint: the previous generation, with one warning, when the newest is
    damaged or gone (a crash between the two renames); None when the stage has none."""
    if not (last.exists() or previous.exists()):
        return None
    try:
        return load_checkpoint(last, f"{stage} checkpoint")
    except CheckpointError:
        if not previous.exists():
            raise
    try:
        ckpt = load_checkpoint(previous, f"{stage} checkpoint")
    except CheckpointError:
        raise CheckpointError(
            f"{stage} checkpoints {last} and {previous} are both damaged or missing; delete them to retrain that stage"
        ) from None
    log.warning("%s is damaged or missing; continuing from %s (epoch %d)", last, previous, ckpt["epoch"])
    return ckpt


def _check_same_config(saved: dict | None, current: dict | None, path: Path) -> None:
    if saved is None or current is None:
        return
    if saved == current:
        return
    diff = differences(saved, current)
    raise CheckpointError(
        f"{path} was written by a run with a different config (differs in: {', '.join(diff[:6])}); "
        "use a new hydra.run.dir, or resume=false to start this directory over"
    )
