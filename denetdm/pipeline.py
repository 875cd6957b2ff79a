"""From a composed config to a finished run: data, models, the stages and results.json.

run.py is only the command line: `train(cfg, run_dir)` takes the composed config and a directory and reads
no global Hydra state, so tests, benchmarks and other entry points call it (and the builders) directly.
"""

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from denetdm.checkpoint import load_checkpoint
from denetdm.cli import instantiate_checked
from denetdm.data.splits import BiasedData
from denetdm.engine import SELECTIONS, Schedule, Trainer, evaluate_all, metric_key
from denetdm.errors import ConfigError
from denetdm.fingerprint import fingerprint
from denetdm.methods import DeNetDMStage1, DeNetDMStage2
from denetdm.metrics import METRICS
from denetdm.models import TargetModel, TwoExpertModel, build_backbone, is_convolutional
from denetdm.report import summary_table
from denetdm.seeding import derive_seed
from denetdm.tracking import write_json

log = logging.getLogger("denetdm")

SPLITS = ("val", "test")
PARTS = ("deep", "shallow", "target")


def resolve_device(name: str) -> torch.device:
    """`auto` (cuda when visible, else cpu), `cpu` or `cuda[:N]`; one clear error otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA device is visible; use device=cpu or device=auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {name!r}") from None


def uses_channels_last(specs: Iterable[Mapping], input_shape: tuple[int, ...]) -> bool:
    """Images for convolutional backbones go channels-last (faster convolutions); MLPs would only pay a copy."""
    return len(input_shape) == 3 and any(is_convolutional(spec["name"]) for spec in specs)


def build_stage1(meta: dict, optimizer=None, lr: float = 0.0, weight_decay: float = 0.0) -> DeNetDMStage1:
    """The stage-1 method from the model specs (meta["model"]), input shape and class count."""
    shape, m = tuple(meta["input_shape"]), meta["model"]
    model = TwoExpertModel(build_backbone(m["deep"], shape), build_backbone(m["shallow"], shape), meta["num_classes"])
    return DeNetDMStage1(model, optimizer, lr=lr, weight_decay=weight_decay)


def build_stage2(meta: dict, stage1: DeNetDMStage1, optimizer=None, **hparams) -> DeNetDMStage2:
    """The stage-2 method around a trained stage-1 model (the target is built freshly from meta)."""
    target = TargetModel(build_backbone(meta["model"]["target"], tuple(meta["input_shape"])), stage1.model.head)
    return DeNetDMStage2(stage1.model, target, optimizer, **hparams)


def final_results(metrics: Mapping) -> dict:
    """The deliverable (stage-2 target) model's metrics again as `<split>/<metric>`, the keys tables read."""
    return {f"{split}/{m}": metrics[metric_key("stage2", "target", split, m)] for split in SPLITS for m in METRICS}


def evaluate_checkpoint(path: str, data: BiasedData) -> dict:
    """stage=eval: metrics of every head of a saved checkpoint on validation and test."""
    ckpt = load_checkpoint(path)
    meta = ckpt["meta"]
    if list(data.input_shape) != list(meta["input_shape"]):
        raise ConfigError(
            f"{path} expects inputs of shape {meta['input_shape']}, dataset gives {list(data.input_shape)}"
        )
    stage1 = build_stage1(meta)
    method = stage1 if ckpt["kind"] == "stage1" else build_stage2(meta, stage1)
    method.load_state_dict(ckpt["method"])
    out = evaluate_all(method.to(data.val.x.device), data, ckpt["kind"])
    if ckpt["kind"] == "stage2":
        out.update(final_results(out))
    return out | {"checkpoint": str(path)}


@dataclass
class Plan:
    """A checked config: what runs, where, on which device, and each stage's schedule."""

    cfg: DictConfig
    run_dir: Path
    stages: list[str]
    device: torch.device
    config: dict  # the resolved config (device resolved): results.json, W&B and every fingerprint read it
    schedules: dict[str, Schedule]

    def fingerprint(self, stage: str) -> dict:
        """This run's fingerprint for `stage`."""
        return fingerprint(self.config, stage)


def _check_flags(cfg: DictConfig) -> None:
    if cfg.selection not in SELECTIONS:
        raise ConfigError(f"selection must be val, test or last, got {cfg.selection!r}")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise ConfigError(f"seed must be an integer, got {cfg.seed!r}")
    for key in ("amp", "resume"):
        if not isinstance(cfg[key], bool):
            raise ConfigError(f"{key} must be true or false, got {cfg[key]!r}")
    if cfg.threads is not None and (
        not isinstance(cfg.threads, int) or isinstance(cfg.threads, bool) or cfg.threads < 1
    ):
        raise ConfigError(f"threads must be a positive integer (or null for torch's default), got {cfg.threads!r}")
    if cfg.progress not in ("auto", True, False):
        raise ConfigError(f"progress must be auto, true or false, got {cfg.progress!r}")


def _number(key: str, value: object, low: float = 0.0, strict: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and (value > low if strict else value >= low)
    if not ok:
        raise ConfigError(f"{key} must be a number {'>' if strict else '>='} {low:g}, got {value!r}")


def check_optimizer(optimizer, cfg: DictConfig) -> None:
    """Build each stage's optimizer once on a dummy parameter, so that torch's own checks of its values (lr,
    betas, momentum, ...) fail before any data is loaded, as one clear error."""
    for stage in ("stage1", "stage2"):
        node = cfg[stage]
        _number(f"{stage}.lr", node.lr, strict=True)
        _number(f"{stage}.weight_decay", node.weight_decay)
        try:
            optimizer([torch.zeros(1, requires_grad=True)], lr=node.lr, weight_decay=node.weight_decay)
        except (ValueError, TypeError, RuntimeError) as e:
            raise ConfigError(
                f"the optimizer rejects the {stage} values: {e}; check optimizer.* and {stage}.*"
            ) from None


def plan(cfg: DictConfig, run_dir: Path) -> Plan:
    """Check every top-level value before anything is loaded or trained."""
    _check_flags(cfg)
    stages = list(cfg.stage.stages)
    if not stages or any(s not in ("stage1", "stage2", "eval") for s in stages):
        raise ConfigError(f"stage.stages must list stage1, stage2 or eval, got {stages}")
    if "eval" in stages and not cfg.stage.ckpt:
        raise ConfigError("stage=eval needs stage.ckpt=<path to a .pt checkpoint written by run.py>")
    if "stage2" in stages and "stage1" not in stages and not cfg.stage.stage1_ckpt:
        raise ConfigError("stage=stage2 needs stage.stage1_ckpt=<run dir>/checkpoints/stage1_selected.pt")
    device = resolve_device(str(cfg.device))
    config = OmegaConf.to_container(cfg, resolve=True)
    config["device"] = device.type  # `auto` on a GPU machine and on a CPU machine are different runs
    for key in ("poe_weight", "dist_weight"):
        _number(f"stage2.{key}", cfg.stage2[key])
    _number("stage2.temperature", cfg.stage2.temperature, strict=True)
    schedules = {}
    for stage in ("stage1", "stage2"):
        node = cfg[stage]
        seed = derive_seed(cfg.seed, f"{stage}-batches")
        schedules[stage] = Schedule(node.epochs, node.batch_size, node.select, seed).check(stage)
    return Plan(cfg, Path(run_dir), stages, device, config, schedules)


def _finished(p: Plan) -> dict | None:
    """results.json of a finished run of the same config in this directory, else None."""
    path = p.run_dir / "results.json"
    if not (p.cfg.resume and (p.run_dir / "done").exists() and path.exists()) or "eval" in p.stages:
        return None
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # damaged: train again (finished epochs resume from the checkpoints)
    last = p.stages[-1]
    if results.get("stages") != p.stages or fingerprint(results.get("config") or {}, last) != p.fingerprint(last):
        return None
    log.info("%s already finished; showing its results (resume=false trains again)", p.run_dir)
    return results


def _load_data(p: Plan) -> tuple[BiasedData, bool]:
    """The dataset on the training device, and whether its images are channels-last."""
    data = instantiate_checked(p.cfg.dataset).load()
    channels_last = uses_channels_last([p.config["model"][k] for k in PARTS], data.input_shape)
    data = data.to(p.device, channels_last=channels_last)
    sizes = f"{len(data.train)} train / {len(data.val)} val / {len(data.test)} test samples"
    log.info("%s: %s on %s", data.name, sizes, p.device)
    return data, channels_last


class StageRunner:
    """Trains or loads the configured stages with one Trainer; collects their results.json entries."""

    def __init__(self, p: Plan, data: BiasedData, channels_last: bool, optimizer, trainer: Trainer) -> None:
        self.p, self.data, self.optimizer, self.trainer = p, data, optimizer, trainer
        self.fmt = torch.channels_last if channels_last else torch.preserve_format
        self.specs = {k: p.config["model"][k] for k in PARTS}  # stage=stage2 takes deep/shallow from its checkpoint
        self.results: dict = {}
        self.times = {"stage1": 0.0, "stage2": 0.0}

    def meta(self, stage: str) -> dict:
        """What a checkpoint of `stage` stores: input shape, classes, model specs and the config fingerprint."""
        shape, classes = list(self.data.input_shape), self.data.num_classes
        return {"input_shape": shape, "num_classes": classes, "model": self.specs, "config": self.p.fingerprint(stage)}

    def _fit(self, stage: str, method) -> None:
        method.amp = self.p.cfg.amp
        schedule, resume = self.p.schedules[stage], self.p.cfg.resume
        r = self.trainer.fit(stage, method, self.data, schedule, self.meta(stage), resume, self.data.augment)
        self.results.update(r.metrics)
        self.results[f"{stage}/selected_epoch"], self.times[stage] = r.selected_epoch, r.elapsed_s

    def stage1(self) -> DeNetDMStage1:
        """Train stage 1 from scratch (or resume it)."""
        s1 = self.p.cfg.stage1
        torch.manual_seed(derive_seed(self.p.cfg.seed, "stage1-init"))
        method = build_stage1(self.meta("stage1"), self.optimizer, lr=s1.lr, weight_decay=s1.weight_decay)
        method = method.to(self.p.device, memory_format=self.fmt)
        self._fit("stage1", method)
        return method

    def load_stage1(self) -> DeNetDMStage1:
        """stage=stage2: the stage-1 experts of `stage.stage1_ckpt`, evaluated for the results."""
        path = self.p.cfg.stage.stage1_ckpt
        ckpt = load_checkpoint(path, "stage-1 checkpoint")
        if ckpt["kind"] != "stage1":
            raise ConfigError(f"stage.stage1_ckpt={path} holds a {ckpt['kind']} checkpoint, not stage1")
        self.specs.update({k: ckpt["meta"]["model"][k] for k in ("deep", "shallow")})
        method = build_stage1(ckpt["meta"]).to(self.p.device, memory_format=self.fmt)
        method.load_state_dict(ckpt["method"])
        self.results.update(evaluate_all(method, self.data, "stage1"))
        return method

    def stage2(self, stage1: DeNetDMStage1) -> None:
        """Train the target model next to the frozen stage-1 experts."""
        s2 = self.p.cfg.stage2
        torch.manual_seed(derive_seed(self.p.cfg.seed, "stage2-init"))
        hparams = {k: s2[k] for k in ("lr", "weight_decay", "poe_weight", "dist_weight", "temperature")}
        method = build_stage2(self.meta("stage2"), stage1, self.optimizer, **hparams)
        self._fit("stage2", method.to(self.p.device, memory_format=self.fmt))
        self.results.update(final_results(self.results))

    def run(self) -> dict:
        """The configured stages in order; returns their results.json entries."""
        if "eval" in self.p.stages:
            self.results.update(evaluate_checkpoint(self.p.cfg.stage.ckpt, self.data))
        stage1 = None
        if "stage1" in self.p.stages:
            stage1 = self.stage1()
        elif "stage2" in self.p.stages:
            stage1 = self.load_stage1()
        if "stage2" in self.p.stages:
            self.stage2(stage1)
        return self.results | {f"time/{k}_s": v for k, v in self.times.items()}


def train(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Run the configured stages in `run_dir` and return the results dict (also written to results.json)."""
    p = plan(cfg, run_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.selection == "test":
        log.warning("selection=test: checkpoints are chosen on the TEST set (the reference code's oracle protocol)")
    if (done := _finished(p)) is not None:
        print(summary_table(done))
        return done
    optimizer = instantiate_checked(cfg.optimizer, _convert_="all")
    check_optimizer(optimizer, cfg)
    p.run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data, channels_last = _load_data(p)
    t_data = time.time() - t0
    logger = instantiate_checked(cfg.logger, _partial_=True, _convert_="all")(
        run_dir=str(p.run_dir), run_config=p.config
    )
    progress = None if cfg.progress == "auto" else cfg.progress
    trainer = Trainer(p.run_dir, logger, cfg.selection, progress)
    results: dict = {"seed": cfg.seed, "selection": cfg.selection, "selection_oracle": cfg.selection == "test"}
    with logger:
        results.update(StageRunner(p, data, channels_last, optimizer, trainer).run())
        results["time/data_s"] = t_data
        results["time/total_s"] = results["time/stage1_s"] + results["time/stage2_s"] + t_data
        results |= {"stages": p.stages, "dataset": {"name": data.name, **data.info}, "config": p.config}
        logger.summary(results)
    write_json(p.run_dir / "results.json", results)
    (p.run_dir / "done").write_text("")
    print(summary_table(results))
    return results
