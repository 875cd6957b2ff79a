"""The one training/evaluation loop: epochs, evaluation, model selection, checkpoints, resume.

It has no method-specific branches: a method is anything with update/predict (denetdm.methods.Method).
Every number it records is keyed `<stage>/<head>/<split>/<metric>` (training losses `<stage>/train/<loss>`,
wall times `<stage>/time/<what>`), in metrics.jsonl, in W&B and in results.json alike.
"""

import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from denetdm.analysis.probes import ProbeSchedule
from denetdm.data.splits import BiasedData, Split
from denetdm.errors import CheckpointError, ConfigError, TrainingError, WriteError
from denetdm.files.jsonlines import JsonLines
from denetdm.methods.base import Method
from denetdm.reporting.loggers import NullLogger
from denetdm.training.checkpoint import CheckpointWriter, load_checkpoint, on_host, save_checkpoint
from denetdm.training.fingerprint import differences
from denetdm.training.metrics import group_metrics_rows
from denetdm.training.phases import Schedule
from denetdm.training.selection import PROTOCOLS, Protocol

log = logging.getLogger(__name__)

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


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


def add_losses(sums: dict[str, torch.Tensor], losses: dict[str, torch.Tensor]) -> None:
    """Sum a step's losses into `sums` on the device (read once per epoch)."""
    for k, v in losses.items():
        sums[k] = sums[k] + v if k in sums else v


def evaluate_all(method: Method, data: BiasedData, stage: str) -> dict[str, float]:
    """`evaluate` on every evaluation split, keyed `<stage>/<head>/<split>/<metric>`."""
    out: dict[str, float] = {}
    for name, split in data.splits().items():
        out |= keyed(stage, name, evaluate(method, split, data.num_classes, data.num_biases))
    return out


@dataclass
class StageResult:
    """What a finished stage hands on: the selected epoch, its metrics and the stage's wall time."""

    selected_epoch: int
    metrics: dict[str, float]
    elapsed_s: float


@dataclass
class Fit:
    """One stage's training in progress: what `Trainer.begin` restored and `end_epoch` updates."""

    stage: str
    method: Method
    data: BiasedData
    schedule: Schedule
    meta: dict
    augment: Augment | None
    gen: torch.Generator
    state: dict
    step: Callable[[torch.Tensor], dict] | None = None  # one training step on the batch at these indices

    def epochs(self) -> range:
        """The epochs still to train."""
        return range(self.state["epoch"] + 1, self.schedule.epochs + 1)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The training batch (x, y, idx) at `idx`, augmented where the stage augments (from its generator)."""
        x, y, idx = self.data.train.batch(idx)
        return (self.augment(x, self.gen) if self.augment is not None else x), y, idx


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
                self.records.truncate(stage, 0)  # a fresh start of this stage replaces any earlier records of it
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

    def record(self, fit: Fit, epoch: int, record: dict, metrics: dict[str, float]) -> None:
        """Append an epoch's record, log it, keep its checkpoint if selection prefers it, save the last one."""
        # a GPU trains on while a thread writes; on a CPU the writes would compete with training for the cores
        background = any(p.is_cuda for p in fit.method.parameters())
        self.writer.call(self._append, fit.stage, record, background=background)
        self.logger.log(fit.stage, epoch, record)
        self._select_and_save(fit, epoch, metrics, background)
        self._report(fit.stage, epoch, fit.schedule, record, fit.state["elapsed_s"])
        if self.on_epoch is not None:
            self.on_epoch(fit.stage, epoch, record)

    def _append(self, stage: str, record: dict) -> None:
        try:
            self.records.append(record)
        except OSError as e:
            raise WriteError(
                f"could not write {self.records.path} ({e.strerror or e}): free space (or fix the folder's "
                f"permissions) and run the same command again. {self.saved_so_far(stage)}"
            ) from None

    def _select_and_save(self, fit: Fit, epoch: int, metrics: dict[str, float], background: bool) -> None:
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

    def finish(self, fit: Fit) -> StageResult:
        """Load the selected checkpoint into the method; the stage's result."""
        if fit.state["best_epoch"] == 0:
            raise CheckpointError(f"{fit.stage}: no epoch was trained; set {fit.stage}.epochs >= 1")
        self.writer.flush()
        best = load_checkpoint(self.checkpoint_path(fit.stage, "selected"), f"{fit.stage} selected checkpoint")
        fit.method.load_state_dict(best["method"])
        return StageResult(fit.state["best_epoch"], fit.state["best_metrics"], fit.state["elapsed_s"])

    def _report(self, stage: str, epoch: int, schedule: Schedule, record: dict, elapsed_s: float) -> None:
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


class Trainer:
    """The loop of a run's stages: epochs of steps, evaluation and probes; the Recorder keeps what they give."""

    def __init__(
        self,
        run_dir: str | Path,
        logger: NullLogger | None = None,
        protocol: Protocol = PROTOCOLS["val"],
        label_free_metric: str = "acc",
        progress: bool | None = None,
        probe: ProbeSchedule | None = None,
        captured: bool = False,
        max_loss: float | None = None,
    ) -> None:
        self.recorder = Recorder(Path(run_dir), logger or NullLogger(), protocol, label_free_metric)
        self.max_loss = max_loss  # a mean training loss above it has diverged (None: only a non-finite one)
        self.captured = captured  # CUDA graphs for the training steps of methods on a GPU (denetdm.training.captured)
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.probe = probe or ProbeSchedule()

    def fit(self, *args, **kwargs) -> StageResult:
        """A whole stage (`begin`'s arguments): train the method by its schedule, evaluating every epoch and keeping
        the checkpoint the selection rule chooses."""
        return self.fit_from(self.begin(*args, **kwargs))

    def fit_from(self, fit: Fit) -> StageResult:
        """The epochs left of a begun stage, one method at a time."""
        for epoch in fit.epochs():
            t0 = time.time()
            self.end_epoch(fit, epoch, self._train_epoch(fit, epoch), t0)
        return self.recorder.finish(fit)

    def begin(
        self,
        stage: str,
        method: Method,
        data: BiasedData,
        schedule: Schedule,
        meta: dict,
        resume: bool = True,
        augment: Augment | None = None,
    ) -> Fit:
        """Restore the stage's loop state (the start of `fit`; a stack calls it per member). `meta` is stored in every
        checkpoint (model specs, config fingerprint); its "config" entry must match on resume."""
        if schedule.drop_last and len(data.train) < schedule.batch_size:
            raise ConfigError(
                f"{schedule.source}.drop_last=true drops every batch: {schedule.source}.batch_size="
                f"{schedule.batch_size} is more than the {len(data.train)} training images; lower the batch size or "
                f"set {schedule.source}.drop_last=false"
            )
        gen = torch.Generator().manual_seed(int(schedule.seed))
        state = self.recorder.restore(stage, method, gen, meta, resume)
        if state["epoch"] < schedule.epochs:
            method.prepare(data.train, augmented=augment is not None)
        fit = Fit(stage, method, data, schedule, meta, augment, gen, state)
        fit.step = self._step(fit)
        return fit

    def _step(self, fit: Fit) -> Callable[[torch.Tensor], dict]:
        """The method's update on the batch at some indices; captured as a CUDA graph where asked for and the
        method is on a GPU (with the batch gathered inside the graph, unless it is augmented on the host)."""
        method = fit.method
        on_gpu = any(p.is_cuda for p in method.parameters())
        if not (self.captured and method.capturable and method.optimizer is not None and on_gpu):
            return lambda idx: method.update(*fit.batch(idx))
        from denetdm.training.captured import CapturedStep, make_capturable

        make_capturable([method.optimizer])  # after the restore, which brings the checkpoint's settings back
        if fit.augment is not None:  # augmentation draws from the host generator: outside the graph
            captured = CapturedStep(method.update)
            return lambda idx: captured(*fit.batch(idx))
        return CapturedStep(lambda idx: method.update(*fit.data.train.batch(idx)))

    def end_epoch(
        self, fit: Fit, epoch: int, train: dict[str, float], t0: float, metrics: dict[str, float] | None = None
    ) -> None:
        """Evaluate (unless a stack evaluated its members at once: `metrics`), record, select and checkpoint an
        epoch whose training began at `t0`."""
        stage = fit.stage
        t_train = time.time() - t0
        metrics = dict(metrics) if metrics is not None else evaluate_all(fit.method, fit.data, stage)
        if self.probe.due(epoch):  # analysis only: selection never reads these keys
            t_probe = time.time()
            metrics |= self.probe.measure(fit.method, fit.data, stage, epoch)
            metrics[f"{stage}/time/probe_s"] = time.time() - t_probe
        fit.state["elapsed_s"] += time.time() - t0
        record = {"stage": stage, "epoch": epoch, **train, **metrics, f"{stage}/time/train_s": t_train}
        record[f"{stage}/time/epoch_s"] = time.time() - t0
        self.recorder.record(fit, epoch, record, metrics)

    def epoch_indices(self, fit: Fit, epoch: int) -> Iterator[torch.Tensor]:
        """The index batches of one epoch: the method's `epoch_order`, drawn from the stage's generator."""
        samples = fit.method.epoch_order(len(fit.data.train), fit.gen)
        order = fit.data.train.order(samples, fit.schedule.batch_size, fit.schedule.drop_last)
        if not self.progress:
            return order
        from tqdm import tqdm

        n, size = len(samples), fit.schedule.batch_size
        total = n // size if fit.schedule.drop_last else -(-n // size)
        return tqdm(order, total=total, desc=f"{fit.stage} {epoch}/{fit.schedule.epochs}", leave=False)

    def _train_epoch(self, fit: Fit, epoch: int) -> dict[str, float]:
        """One pass over the training split; mean losses as `<stage>/train/<loss>` (read from the device once)."""
        fit.method.train()
        sums: dict[str, torch.Tensor] = {}
        n = 0
        for idx in self.epoch_indices(fit, epoch):
            add_losses(sums, fit.step(idx))
            n += 1
        return self.train_means(fit, epoch, sums, n)

    def train_means(self, fit: Fit, epoch: int, sums: dict[str, torch.Tensor], n: int) -> dict[str, float]:
        """`<stage>/train/<loss>` from losses summed over `n` batches on the device (read once per epoch)."""
        stage = fit.stage
        train = {f"{stage}/train/{k}": v.item() / n for k, v in sums.items()}
        loss = train.get(f"{stage}/train/loss", 0.0)
        if not all(math.isfinite(v) for v in train.values()):
            why = f"the training loss is {loss} (not finite)"
        elif self.max_loss is not None and loss > self.max_loss:
            why = f"the training loss is {loss:.3g}, above max_loss={self.max_loss:g}: it diverges"
        else:
            return train
        hint = f"lower {fit.schedule.source}.lr or check the data"
        raise TrainingError(f"{stage} epoch {epoch}: {why}; {hint}. {self.recorder.saved_so_far(stage)}")


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
