"""The one epoch loop, for one run or a stack of runs trained together (a plain run is a stack of one).

Each epoch, the live members' batches are stepped together (denetdm.training.stacked: in turn, or vmapped), then
each member is evaluated, recorded, selected and checkpointed by its own Trainer and Recorder. The loop has no
method-specific branch: a method is anything with update/predict (denetdm.methods.Method).
"""

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from denetdm.analysis.probes import ProbeSchedule
from denetdm.data.augment import Augment, views
from denetdm.data.splits import BiasedData
from denetdm.errors import ConfigError, DenetdmError, TrainingError
from denetdm.methods.base import Method
from denetdm.reporting.loggers import NullLogger
from denetdm.selection import PROTOCOLS, Protocol
from denetdm.training.evaluation import evaluate_all
from denetdm.training.phases import Schedule
from denetdm.training.recorder import Recorder, StageResult
from denetdm.training.stacked import stepper


@dataclass
class Fit:
    """One stage's training in progress: what `Trainer.begin` restored and `end_epoch` updates."""

    stage: str
    method: Method
    data: BiasedData
    schedule: Schedule
    meta: dict
    gen: torch.Generator
    state: dict

    def epochs(self) -> range:
        """The epochs still to train."""
        return range(self.state["epoch"] + 1, self.schedule.epochs + 1)

    @property
    def augment(self) -> Augment | None:
        """The dataset's augmentation of training batches, if any."""
        return self.data.augment

    def batch(self, idx: torch.Tensor) -> tuple:
        """The training batch (x, y, idx) at `idx`, x in the views the method asks for (augmented from the stage's
        generator where the dataset augments)."""
        x, y, idx = self.data.train.batch(idx)
        return views(x, self.augment, self.gen, self.method.views), y, idx


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
        """A whole stage (`begin`'s arguments) of this run alone: train the method by its schedule, evaluating every
        epoch and keeping the checkpoint the selection rule chooses."""
        (result,) = fit_phase([self], [self.begin(*args, **kwargs)])
        if isinstance(result, DenetdmError):
            raise result
        return result

    def begin(
        self,
        stage: str,
        method: Method,
        data: BiasedData,
        schedule: Schedule,
        meta: dict,
        resume: bool = True,
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
        if state["epoch"] == 0 and self.probe.at_init:  # the untrained networks, as epoch 0 (analysis only)
            t0 = time.time()
            probes = self.probe.measure(method, data, stage, 0)
            self.recorder.append(
                stage, {"stage": stage, "epoch": 0, **probes, f"{stage}/time/probe_s": time.time() - t0}
            )
        if state["epoch"] < schedule.epochs:
            method.prepare(data.train, augmented=data.augment is not None and method.views > 0)
        return Fit(stage, method, data, schedule, meta, gen, state)

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

    def epoch_indices(self, fit: Fit, epoch: int) -> list[torch.Tensor]:
        """The index batches of one epoch: the method's `epoch_order`, drawn from the stage's generator."""
        samples = fit.method.epoch_order(len(fit.data.train), fit.gen)
        order = list(fit.data.train.order(samples, fit.schedule.batch_size, fit.schedule.drop_last))
        if not self.progress:
            return order
        from tqdm import tqdm

        return tqdm(order, desc=f"{fit.stage} {epoch}/{fit.schedule.epochs}", leave=False)

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


def add_losses(sums: dict[str, torch.Tensor], losses: dict[str, torch.Tensor]) -> None:
    """Sum a step's losses into `sums` on the device (read once per epoch)."""
    for k, v in losses.items():
        sums[k] = sums[k] + v if k in sums else v


def train_epoch(steps, trainers: Sequence[Trainer], fits: Sequence[Fit], epoch: int) -> list[tuple[dict, int, float]]:
    """One pass of every member over its training split, the members that step together (`steps.groups`) at once:
    per member its summed losses, its number of batches and the learning rate's multiplier at its last step."""
    for fit in fits:
        fit.method.train()
    orders = [t.epoch_indices(f, epoch) for t, f in zip(trainers, fits, strict=True)]
    lrs, out = fits[0].schedule.lr_schedule, [None] * len(fits)
    for group in steps.groups:
        sums: dict[str, torch.Tensor] = {}
        n, factor = len(orders[group[0]]), 1.0
        for i, idxs in enumerate(zip(*(orders[k] for k in group), strict=True)):
            if lrs.varies:
                factor = lrs.factor(epoch - 1 + i / n, 1 / n, fits[0].schedule.epochs)
                steps.set_lr(factor, group)
            add_losses(sums, steps.update(idxs, group))
        for j, k in enumerate(group):
            out[k] = ({key: v[j] for key, v in sums.items()}, n, factor)
    steps.push()
    return out


def fit_phase(trainers: Sequence[Trainer], fits: Sequence[Fit], vectorize: bool = False) -> list:
    """Train one phase of members with the same epochs and batches left, each recorded and checkpointed by its own
    trainer; each member's StageResult, or the error that stopped it (a pruned trial, a non-finite loss: the
    others train on without it)."""
    out: list[StageResult | DenetdmError | None] = [None] * len(fits)
    live = list(range(len(fits)))
    steps = stepper(trainers, fits, vectorize)
    for epoch in fits[0].epochs():
        t0 = time.time()
        try:
            done = train_epoch(steps, [trainers[k] for k in live], [fits[k] for k in live], epoch)
        except DenetdmError as e:  # in a step every live member takes: it stops them all
            return [e if k in live else r for k, r in enumerate(out)]
        evals = steps.evaluate_all([fits[k].data for k in live], fits[0].stage)
        for j, k in enumerate(live):
            try:
                sums, n, factor = done[j]
                train = trainers[k].train_means(fits[k], epoch, sums, n)
                if fits[k].schedule.lr_schedule.varies:  # the learning rate of the epoch's last step
                    train[f"{fits[k].stage}/train/lr"] = fits[k].schedule.lr * factor
                trainers[k].end_epoch(fits[k], epoch, train, t0, evals[j] if evals else None)
            except DenetdmError as e:
                out[k] = e
        if any(out[k] is not None for k in live):
            live = [k for k in live if out[k] is None]
            for k in live:  # the members left, stacked anew from their own modules (pushed above)
                fits[k].method.train()
            if live:
                steps = stepper([trainers[k] for k in live], [fits[k] for k in live], vectorize)
        if not live:
            break
    for k in live:
        try:
            out[k] = trainers[k].recorder.finish(fits[k])
        except DenetdmError as e:
            out[k] = e
    return out


def fit_together(trainers: Sequence[Trainer], fits: Sequence[Fit], vectorize: bool) -> list:
    """One phase of runs begun together: those with the same epochs and batches left (a kill can leave members
    apart) as one stack each; each run's StageResult, or the error that stopped it."""
    groups: dict[tuple, list[int]] = {}
    for k, f in enumerate(fits):
        shape = (f.state["epoch"], f.schedule.epochs, len(f.data.train), f.schedule.batch_size, f.schedule.drop_last)
        groups.setdefault(shape, []).append(k)
    out: list = [None] * len(fits)
    for ks in groups.values():
        done = fit_phase([trainers[k] for k in ks], [fits[k] for k in ks], vectorize)
        for k, result in zip(ks, done, strict=True):
            out[k] = result
    return out
