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
from denetdm.checkpoint import CheckpointWriter, load_checkpoint
from denetdm.checks import positive_int
from denetdm.data.splits import BiasedData, Split
from denetdm.errors import CheckpointError, ConfigError, TrainingError
from denetdm.methods.base import Method
from denetdm.metrics import group_metrics
from denetdm.selection import Protocol, check_label_free_metric, protocol
from denetdm.tracking import JsonLines, NullLogger

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
    return head_metrics({head: torch.cat(p) for head, p in preds.items()}, split, num_classes, num_biases)


def head_metrics(
    preds: dict[str, torch.Tensor], split: Split, num_classes: int, num_biases: int
) -> dict[str, dict[str, float]]:
    """Group metrics of each head's predicted classes on `split`: {head: {metric: value}}."""
    return {head: group_metrics(p, split.y, split.b, num_classes, num_biases) for head, p in preds.items()}


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


@dataclass(frozen=True)
class Schedule:
    """How one stage trains: epochs, batch size, the `<head>/<metric>` that selection maximises, batch-order seed,
    and a selection protocol of its own (None: the run's, `selection=`)."""

    epochs: int
    batch_size: int
    select: str
    seed: int
    selection: str | None = None
    drop_last: bool = False  # drop the last partial training batch of each epoch (the reference's stage 1 does)

    def check(self, stage: str) -> "Schedule":
        """Raise a ConfigError naming `<stage>.<key>` for a value torch would reject or misuse."""
        for name in ("epochs", "batch_size"):
            positive_int(f"{stage}.{name}", getattr(self, name))
        if not isinstance(self.drop_last, bool):
            raise ConfigError(f"{stage}.drop_last must be true or false, got {self.drop_last!r}")
        if not isinstance(self.select, str) or self.select.count("/") != 1:
            raise ConfigError(
                f"{stage}.select must be <head>/<metric> (e.g. shallow/acc_conflicting), got {self.select!r}"
            )
        return self


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
    step: Callable[..., dict]  # the method's update, or its captured step (captured=true on CUDA)
    gathers: bool = False  # `step` takes a batch's indices alone and gathers the batch itself (inside its graph)

    def epochs(self) -> range:
        """The epochs still to train."""
        return range(self.state["epoch"] + 1, self.schedule.epochs + 1)


class Trainer:
    """Runs stages in a run directory: metrics.jsonl, checkpoints/<stage>_{last,selected}.pt."""

    def __init__(
        self,
        run_dir: str | Path,
        logger: NullLogger | None = None,
        selection: str = "val",
        progress: bool | None = None,
        label_free_metric: str = "acc",
        probe: ProbeSchedule | None = None,
        captured: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.captured = captured  # CUDA graphs for the training steps of methods on a GPU (denetdm.captured)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.logger = logger or NullLogger()
        self.protocol: Protocol = protocol(selection)
        self.label_free_metric = check_label_free_metric(label_free_metric)
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.records = JsonLines(self.run_dir / "metrics.jsonl")
        self.writer = CheckpointWriter()  # a GPU run's checkpoints are written while the next epoch trains
        self.probe = (probe or ProbeSchedule()).check()
        self.on_epoch = None  # called with (stage, epoch, record) after each epoch's checkpoint (sweep pruning)

    def checkpoint_path(self, stage: str, which: str) -> Path:
        """Path of a stage's `last` or `selected` checkpoint."""
        return self.ckpt_dir / f"{stage}_{which}.pt"

    def fit(
        self,
        stage: str,
        method: Method,
        data: BiasedData,
        schedule: Schedule,
        meta: dict,
        resume: bool = True,
        augment: Augment | None = None,
    ) -> StageResult:
        """Train `method` by `schedule`, evaluating every epoch and keeping the checkpoint chosen by the
        selection rule. `meta` is stored in every checkpoint (model specs, config fingerprint); its "config"
        entry must match on resume."""
        return self.fit_from(self.begin(stage, method, data, schedule, meta, resume, augment))

    def fit_from(self, fit: "Fit") -> StageResult:
        """The epochs left of a begun stage, one method at a time."""
        for epoch in fit.epochs():
            t0 = time.time()
            self.end_epoch(fit, epoch, self._train_epoch(fit, epoch), t0)
        return self.finish(fit)

    def begin(
        self, stage: str, method: Method, data: BiasedData, schedule: Schedule, meta: dict, resume: bool = True,
        augment: Augment | None = None,
    ) -> "Fit":  # fmt: skip
        """Check the schedule and restore the stage's loop state (the start of `fit`; a stack calls it per member)."""
        schedule.check(stage)
        if schedule.drop_last and len(data.train) < schedule.batch_size:
            raise ConfigError(
                f"{stage}.drop_last=true drops every batch: {stage}.batch_size={schedule.batch_size} is more than "
                f"the {len(data.train)} training images; lower the batch size or set {stage}.drop_last=false"
            )
        gen = torch.Generator().manual_seed(int(schedule.seed))
        state = self._restore(stage, method, gen, meta, resume)
        if state["epoch"] < schedule.epochs:
            method.prepare(data.train, augmented=augment is not None)
        return Fit(stage, method, data, schedule, meta, augment, gen, state, *self._step(method, data, augment))

    def _step(self, method: Method, data: BiasedData, augment: Augment | None) -> tuple[Callable[..., dict], bool]:
        """The method's update, captured as a CUDA graph where asked for and the method is on a GPU; whether the
        step gathers its own batch (captured, unaugmented: the gather is replayed with the graph)."""
        on_gpu = any(p.is_cuda for p in method.parameters())
        if not (self.captured and on_gpu and method.optimizer is not None):
            return method.update, False
        from denetdm.captured import CapturedStep, gathering, make_capturable

        make_capturable([method.optimizer])  # after the restore, which brings the checkpoint's settings back
        if augment is not None:  # augmentation draws from the host generator: outside the graph
            return CapturedStep(method.update), False
        return CapturedStep(gathering(method.update, data.train)), True

    def end_epoch(
        self, fit: "Fit", epoch: int, train: dict[str, float], t0: float, metrics: dict[str, float] | None = None
    ) -> None:
        """Evaluate (unless a stack evaluated its members at once: `metrics`), record, select and checkpoint an
        epoch whose training began at `t0`."""
        stage, method, data = fit.stage, fit.method, fit.data
        t_train = time.time() - t0
        metrics = dict(metrics) if metrics is not None else evaluate_all(method, data, stage)
        if self.probe.due(epoch):  # analysis only: selection never reads these keys
            t_probe = time.time()
            metrics |= self.probe.measure(method, data, stage, epoch)
            metrics[f"{stage}/time/probe_s"] = time.time() - t_probe
        fit.state["elapsed_s"] += time.time() - t0
        record = {"stage": stage, "epoch": epoch, **train, **metrics, f"{stage}/time/train_s": t_train}
        record[f"{stage}/time/epoch_s"] = time.time() - t0
        self.records.append(record)
        self.logger.log(stage, epoch, record)
        self._select_and_save(stage, method, fit.gen, fit.meta, fit.state, epoch, metrics, fit.schedule)
        self._report(stage, epoch, fit.schedule, record)
        if self.on_epoch is not None:
            self.on_epoch(stage, epoch, record)

    def finish(self, fit: "Fit") -> StageResult:
        """Load the selected checkpoint into the method; the stage's result."""
        if fit.state["best_epoch"] == 0:
            raise CheckpointError(f"{fit.stage}: no epoch was trained; set {fit.stage}.epochs >= 1")
        self.writer.flush()
        best = load_checkpoint(self.checkpoint_path(fit.stage, "selected"), f"{fit.stage} selected checkpoint")
        fit.method.load_state_dict(best["method"])
        return StageResult(fit.state["best_epoch"], fit.state["best_metrics"], fit.state["elapsed_s"])

    def _restore(self, stage: str, method: Method, gen: torch.Generator, meta: dict, resume: bool) -> dict:
        """The loop state after the last saved epoch (method, optimizer and batch order restored), or a fresh one."""
        state = {"epoch": 0, "best_epoch": 0, "best_score": -math.inf, "best_metrics": {}, "elapsed_s": 0.0}
        last_path = self.checkpoint_path(stage, "last")
        if not (resume and last_path.exists()):
            if self.records.path.exists():
                self.records.truncate(stage, 0)  # a fresh start of this stage replaces any earlier records of it
            return state
        ckpt = load_checkpoint(last_path, f"{stage} checkpoint")
        _check_same_config(ckpt.get("meta", {}).get("config"), meta.get("config"), last_path)
        method.load_state_dict(ckpt["method"])
        if ckpt.get("optimizer") is not None and method.optimizer is not None:
            method.optimizer.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["generator"])
        state = {k: ckpt[k] for k in state}
        self.records.truncate(stage, state["epoch"])
        log.info("%s: resuming after epoch %d from %s", stage, state["epoch"], last_path)
        return state

    def epoch_batches(self, fit: "Fit", epoch: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """One epoch's training batches (x, y, idx) of a begun stage, in its order, augmented where it augments."""
        for (idx,) in self.step_args(fit, epoch, indices=True):
            x, y, idx = fit.data.train.batch(idx)
            yield (fit.augment(x, fit.gen) if fit.augment is not None else x), y, idx

    def step_args(self, fit: "Fit", epoch: int, indices: bool | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
        """What a step takes for each batch of an epoch: (x, y, idx), or (idx,) for steps that gather their batch
        (`indices`, by default `fit.gathers`); both draw the epoch's samples (the method's `epoch_order`) from the
        stage's generator."""
        if not (fit.gathers if indices is None else indices):
            yield from self.epoch_batches(fit, epoch)
            return
        samples = fit.method.epoch_order(len(fit.data.train), fit.gen)
        order = fit.data.train.order(samples, fit.schedule.batch_size, fit.schedule.drop_last)
        yield from ((idx,) for idx in self._progress(fit, epoch, order, len(samples)))

    def _progress(self, fit: "Fit", epoch: int, batches: Iterator, n: int) -> Iterator:
        """`batches` (of an epoch of `n` samples) with a progress bar where progress is shown."""
        if not self.progress:
            return batches
        from tqdm import tqdm

        schedule = fit.schedule
        total = n // schedule.batch_size if schedule.drop_last else -(-n // schedule.batch_size)
        return tqdm(batches, total=total, desc=f"{fit.stage} {epoch}/{schedule.epochs}", leave=False)

    def _train_epoch(self, fit: "Fit", epoch: int) -> dict[str, float]:
        """One pass over the training split; mean losses as `<stage>/train/<loss>` (read from the device once)."""
        fit.method.train()
        sums: dict[str, torch.Tensor] = {}
        n = 0
        for args in self.step_args(fit, epoch):
            add_losses(sums, fit.step(*args))
            n += 1
        return self.train_means(fit.stage, epoch, sums, n)

    def train_means(self, stage: str, epoch: int, sums: dict[str, torch.Tensor], n: int) -> dict[str, float]:
        """`<stage>/train/<loss>` from losses summed over `n` batches on the device (read once per epoch)."""
        train = {f"{stage}/train/{k}": v.item() / n for k, v in sums.items()}
        if not all(math.isfinite(v) for v in train.values()):
            saved = self.checkpoint_path(stage, "last")
            raise TrainingError(
                f"{stage} epoch {epoch}: the training loss is {train.get(f'{stage}/train/loss')} (not finite); "
                f"lower {stage}.lr or check the data. Epochs before it are saved in {saved}"
            )
        return train

    def selection_key(self, stage: str, schedule: Schedule) -> str | None:
        """The metric a stage's checkpoint is chosen by under its protocol (None: the last epoch)."""
        proto = protocol(schedule.selection) if schedule.selection else self.protocol
        return proto.key(stage, schedule.select, self.label_free_metric)

    def _select_and_save(
        self, stage: str, method: Method, gen: torch.Generator, meta: dict, state: dict, epoch: int,
        metrics: dict[str, float], schedule: Schedule,
    ) -> None:  # fmt: skip
        """Keep the epoch if the selection rule prefers it, then save the resumable `last` checkpoint."""
        key = self.selection_key(stage, schedule)
        if key is not None and key not in metrics:
            raise ConfigError(f"{stage}: selection needs {key}, which no evaluation gave; check {stage}.select")
        score = epoch if key is None else metrics[key]
        # a GPU trains on while a thread writes; on a CPU the writes would compete with training for the cores
        background = any(p.is_cuda for p in method.parameters())
        if score > state["best_score"]:
            state.update(best_epoch=epoch, best_score=score, best_metrics=metrics)
            ckpt = {"kind": stage, "meta": meta, "epoch": epoch, "method": method.state_dict()}
            path = self.checkpoint_path(stage, "selected")
            self.writer.save(ckpt, path, f"{stage} selected checkpoint", background)
        state["epoch"] = epoch
        optimizer = method.optimizer.state_dict() if method.optimizer is not None else None
        ckpt = {"kind": stage, "meta": meta, "method": method.state_dict(), "optimizer": optimizer}
        ckpt |= {"generator": gen.get_state(), **state}
        self.writer.save(ckpt, self.checkpoint_path(stage, "last"), f"{stage} checkpoint", background)

    def _report(self, stage: str, epoch: int, schedule: Schedule, record: dict) -> None:
        head, metric = schedule.select.split("/")
        keys = (f"{stage}/train/loss", *(metric_key(stage, head, s, metric) for s in ("val", "test")))
        text = " ".join(f"{k} {record[k]:.4f}" for k in keys if k in record)
        log.info("%s epoch %d/%d %s (%.1f s)", stage, epoch, schedule.epochs, text, record[f"{stage}/time/epoch_s"])


def _check_same_config(saved: dict | None, current: dict | None, path: Path) -> None:
    if saved is None or current is None:
        return
    if saved == current:
        return
    diff = sorted(_diff(saved, current))
    raise CheckpointError(
        f"{path} was written by a run with a different config (differs in: {', '.join(diff[:6])}); "
        "use a new hydra.run.dir, or resume=false to start this directory over"
    )


def _diff(a: object, b: object, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]
