"""The one training/evaluation loop: epochs, evaluation, model selection, checkpoints, resume.

It has no method-specific branches: a method is anything with update/predict (denetdm.methods.Method).
"""

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from denetdm.checkpoint import atomic_save, load_checkpoint
from denetdm.data.splits import BiasedData, Split
from denetdm.errors import CheckpointError, ConfigError, TrainingError
from denetdm.methods.base import Method
from denetdm.metrics import group_metrics
from denetdm.tracking import MetricsLog, NullLogger

log = logging.getLogger(__name__)

SELECTIONS = ("val", "test", "last")


@torch.no_grad()
def evaluate(
    method: Method, split: Split, num_classes: int, num_biases: int, batch_size: int = 4096
) -> dict[str, float]:
    """Group metrics of every head of `method` on `split`, keyed `<head>/<metric>`."""
    was_training = method.training
    method.eval()
    preds: dict[str, list[torch.Tensor]] = {}
    for x, _, _ in split.batches(batch_size):
        for head, logits in method.predict(x).items():
            preds.setdefault(head, []).append(logits.argmax(1))
    method.train(was_training)
    out = {}
    for head, p in preds.items():
        for k, v in group_metrics(torch.cat(p), split.y, split.b, num_classes, num_biases).items():
            out[f"{head}/{k}"] = v
    return out


def evaluate_all(method: Method, data: BiasedData) -> dict[str, float]:
    """`evaluate` on every evaluation split, keyed `<split>/<head>/<metric>`."""
    return {
        f"{name}/{k}": v
        for name, split in data.splits().items()
        for k, v in evaluate(method, split, data.num_classes, data.num_biases).items()
    }


@dataclass
class StageResult:
    """What a finished stage hands on: the selected epoch, its metrics and the stage's wall time."""

    selected_epoch: int
    metrics: dict[str, float]
    elapsed_s: float
    checkpoint: Path
    history: list[dict] = field(default_factory=list)


class Trainer:
    """Runs stages in a run directory: metrics.jsonl, checkpoints/<stage>_{last,selected}.pt."""

    def __init__(
        self,
        run_dir: str | Path,
        logger: NullLogger | None = None,
        selection: str = "val",
        progress: bool | None = None,
    ) -> None:
        if selection not in SELECTIONS:
            raise ConfigError(f"selection must be one of {list(SELECTIONS)}, got {selection!r}")
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.logger = logger or NullLogger()
        self.selection = selection
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.records = MetricsLog(self.run_dir / "metrics.jsonl")

    def checkpoint_path(self, stage: str, which: str) -> Path:
        """Path of a stage's `last` or `selected` checkpoint."""
        return self.ckpt_dir / f"{stage}_{which}.pt"

    def fit(
        self,
        stage: str,
        method: Method,
        data: BiasedData,
        epochs: int,
        batch_size: int,
        select: str,
        seed: int,
        meta: dict,
        resume: bool = True,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    ) -> StageResult:
        """Train `method` for `epochs`, evaluating every epoch and keeping the checkpoint chosen by the
        selection rule (`select` is the `<head>/<metric>` maximised on the selection split).

        `meta` is stored in every checkpoint (model specs, config); its "config" entry must match on resume.
        """
        for name, value in (("epochs", epochs), ("batch_size", batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{stage}.{name} must be a positive integer, got {value!r}")
        gen = torch.Generator().manual_seed(int(seed))
        state = {"epoch": 0, "best_epoch": 0, "best_score": -math.inf, "best_metrics": {}, "elapsed_s": 0.0}
        last_path, sel_path = self.checkpoint_path(stage, "last"), self.checkpoint_path(stage, "selected")
        if resume and last_path.exists():
            ckpt = load_checkpoint(last_path, f"{stage} checkpoint")
            _check_same_config(ckpt.get("meta", {}).get("config"), meta.get("config"), last_path)
            method.load_state_dict(ckpt["method"])
            if ckpt.get("optimizer") is not None and method.optimizer is not None:
                method.optimizer.load_state_dict(ckpt["optimizer"])
            gen.set_state(ckpt["generator"])
            state = {k: ckpt[k] for k in state}
            self.records.truncate(stage, state["epoch"])
            log.info("%s: resuming after epoch %d from %s", stage, state["epoch"], last_path)
        elif self.records.path.exists():
            self.records.truncate(stage, 0)  # a fresh start of this stage replaces any earlier records of it

        if state["epoch"] < epochs:
            method.prepare(data.train, augmented=augment is not None)
        for epoch in range(state["epoch"] + 1, epochs + 1):
            t0 = time.time()
            method.train()
            sums: dict[str, torch.Tensor] = {}
            batches = data.train.batches(batch_size, gen)
            if self.progress:
                from tqdm import tqdm

                batches = tqdm(
                    batches, total=-(-len(data.train) // batch_size), desc=f"{stage} {epoch}/{epochs}", leave=False
                )
            n = 0
            for x, y, idx in batches:
                if augment is not None:
                    x = augment(x, gen)
                for k, v in method.update(x, y, idx).items():
                    sums[k] = sums[k] + v if k in sums else v
                n += 1
            train = {f"train/{k}": v.item() / n for k, v in sums.items()}
            t_train = time.time() - t0
            if not all(math.isfinite(v) for v in train.values()):
                raise TrainingError(
                    f"{stage} epoch {epoch}: the training loss is {train.get('train/loss')} (not finite); "
                    f"lower {stage}.lr or check the data. Epochs up to {state['epoch']} are saved in {last_path}"
                )
            metrics = evaluate_all(method, data)
            state["elapsed_s"] += time.time() - t0
            record = {
                "stage": stage,
                "epoch": epoch,
                **train,
                **metrics,
                "time/train_s": t_train,
                "time/epoch_s": time.time() - t0,
            }
            self.records.append(record)
            self.logger.log(stage, epoch, record)
            score = epoch if self.selection == "last" else metrics[f"{self.selection}/{select}"]
            if score > state["best_score"]:
                state.update(best_epoch=epoch, best_score=score, best_metrics=metrics)
                atomic_save({"kind": stage, "meta": meta, "epoch": epoch, "method": method.state_dict()}, sel_path)
            state["epoch"] = epoch
            atomic_save(
                {
                    "kind": stage,
                    "meta": meta,
                    "method": method.state_dict(),
                    "optimizer": method.optimizer.state_dict() if method.optimizer is not None else None,
                    "generator": gen.get_state(),
                    **state,
                },
                last_path,
            )
            self._report(stage, epoch, epochs, record, select)

        if state["best_epoch"] == 0:
            raise CheckpointError(f"{stage}: no epoch was trained; set {stage}.epochs >= 1")
        best = load_checkpoint(sel_path, f"{stage} selected checkpoint")
        method.load_state_dict(best["method"])
        history = [r for r in self.records.read() if r.get("stage") == stage]
        return StageResult(state["best_epoch"], state["best_metrics"], state["elapsed_s"], sel_path, history)

    def _report(self, stage: str, epoch: int, epochs: int, record: dict, select: str) -> None:
        shown = {k: record[k] for k in ("train/loss", f"val/{select}", f"test/{select}") if k in record}
        text = " ".join(f"{k} {v:.4f}" for k, v in shown.items())
        log.info("%s epoch %d/%d %s (%.1f s)", stage, epoch, epochs, text, record["time/epoch_s"])


def _check_same_config(saved: dict | None, current: dict | None, path: Path) -> None:
    if saved is None or current is None or saved == current:
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
