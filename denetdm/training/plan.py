"""A composed config, checked once: `plan(cfg, run_dir)` reads the raw config and returns a Plan of checked values.

Every value is checked here, before any data is loaded or anything trained, and nothing below the plan reads
the raw config: the lifecycle, the trainer and the methods take the Plan's typed fields and its resolved
config (a plain dict: results.json, W&B and the fingerprints read it).
"""

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from denetdm.analysis.probes import ProbeSchedule
from denetdm.checks import instantiate_checked, number, positive_int
from denetdm.errors import ConfigError
from denetdm.fingerprint import fingerprint
from denetdm.methods.base import PARTS
from denetdm.metrics import METRICS
from denetdm.seeding import derive_seed
from denetdm.selection import Protocol, check_label_free_metric, protocol
from denetdm.training import phases as ph
from denetdm.training.phases import Schedule

log = logging.getLogger("denetdm")
EVAL_SPLITS = ("val", "test", "val_biased")
MAX_THREADS = 1024  # torch would start them all


@dataclass(frozen=True)
class MethodInfo:
    """What results.json, tables and W&B say of the method: its names, whether it reads bias labels, the depths
    that tell its table rows apart, and its deliverable model."""

    name: str
    label: str
    uses_bias_labels: bool
    depths: list[int]
    final_phase: str
    final_head: str
    node: dict  # the resolved method node: each checkpoint keeps it, to rebuild its phases from it


@dataclass(frozen=True)
class Plan:
    """A checked config: what runs, where, on which device, each phase resolved, the selection protocol."""

    run_dir: Path
    config: dict  # the resolved config as recorded (results.json, W&B, fingerprints): below the plan, only written
    stages: list[str]  # the phases this process trains (and/or "eval")
    device: torch.device
    phases: dict[str, ph.Phase]  # every phase of the method, in order
    method: MethodInfo
    models: dict[str, dict]  # the model specs by part (shallow, deep, target)
    dataset: Any  # the dataset, built (not loaded) once
    logger: Any  # the run's logger (NullLogger, WandbLogger), its settings checked, not yet started
    setting_name: str  # experiment_name: the preset's label
    protocol: Protocol
    label_free_metric: str  # what the label-free protocols maximise
    objective_key: str
    probe: ProbeSchedule
    optimizer: Callable[..., torch.optim.Optimizer]  # a factory, given each phase's lr and weight decay
    seed: int
    amp: bool
    resume: bool
    captured: bool
    threads: int | None
    progress: bool | None  # None: bars on a terminal only
    previous_ckpt: str | None  # the previous phase's checkpoint, when a later phase runs alone
    max_loss: float | None  # a phase whose mean training loss exceeds it has diverged
    eval_ckpt: str | None  # stage=eval's checkpoint

    @property
    def trained(self) -> list[str]:
        """The phases this run trains."""
        return [s for s in self.stages if s != "eval"]

    def fingerprint(self, stage: str) -> dict:
        """This run's fingerprint for `stage`."""
        return fingerprint(self.config, stage)

    @property
    def data_key(self) -> str:
        """The data's identity: runs of a stack with equal keys share one loaded dataset."""
        return json.dumps(self.config["dataset"], sort_keys=True, default=str)


def resolve_device(name: str, slot: int | None = None) -> torch.device:
    """`auto` (cuda when visible, else cpu), `cpu` or `cuda[:N]`; one clear error otherwise. A sweep job (`slot`:
    its job number) on a machine with several visible GPUs takes GPU `slot % count`, round robin, so the jobs
    that a parallel launcher runs at once land on different GPUs (CUDA_VISIBLE_DEVICES picks which are seen)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and slot is not None and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return torch.device(f"cuda:{slot % torch.cuda.device_count()}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA device is visible; use device=cpu or device=auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {name!r}") from None


def _check_flags(cfg: DictConfig) -> None:
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise ConfigError(f"seed must be an integer, got {cfg.seed!r}")
    for key in ("amp", "resume"):
        if not isinstance(cfg[key], bool):
            raise ConfigError(f"{key} must be true or false, got {cfg[key]!r}")
    if not (isinstance(cfg.captured, bool) or cfg.captured == "auto"):
        raise ConfigError(f"captured must be auto, true or false, got {cfg.captured!r}")
    if positive_int("threads", cfg.threads, allow_none=True) and cfg.threads > MAX_THREADS:
        raise ConfigError(
            f"threads must be at most {MAX_THREADS} (this machine has {os.cpu_count()} cores), got {cfg.threads}"
        )
    if cfg.progress not in ("auto", True, False):
        raise ConfigError(f"progress must be auto, true or false, got {cfg.progress!r}")
    if cfg.max_loss is not None:
        number("max_loss", cfg.max_loss, strict=True)


def check_optimizer(optimizer, betas: object, schedules: Iterable[Schedule]) -> None:
    """Build the optimizer once per schedule on a dummy parameter, so that torch's own checks of its values (lr,
    betas, momentum, ...) fail before any data is loaded, as one clear error."""
    if betas is not None and not (
        isinstance(betas, Sequence) and len(betas) == 2 and all(_fraction(b) for b in betas)
    ):  # torch indexes betas before it checks them
        raise ConfigError(f"optimizer.betas must be two numbers in [0, 1), e.g. [0.9, 0.999], got {betas!r}")
    for s in schedules:
        number(f"{s.source}.lr", s.lr, strict=True)
        number(f"{s.source}.weight_decay", s.weight_decay)
        try:
            optimizer([torch.zeros(1, requires_grad=True)], lr=s.lr, weight_decay=s.weight_decay)
        except (ValueError, TypeError, RuntimeError) as e:
            raise ConfigError(
                f"the optimizer rejects the {s.source} values: {e}; check optimizer.* and {s.source}.*"
            ) from None


def _fraction(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and 0 <= x < 1


def _stages(cfg: DictConfig, names: list[str]) -> list[str]:
    """The phases this process runs (stage.stages; null = all), a contiguous run of the method's phases."""
    asked = list(cfg.stage.stages) if cfg.stage.stages is not None else names
    run = [s for s in asked if s != "eval"]
    if any(s not in names for s in run) or (run and run != names[names.index(run[0]) : names.index(run[0]) + len(run)]):
        raise ConfigError(
            f"stage={cfg.stage.name} runs {run}, but method {cfg.method.name} has the phases {names}: "
            "use stage=full, or a run of consecutive phases"
        )
    if "eval" in asked and not cfg.stage.ckpt:
        raise ConfigError("stage=eval needs stage.ckpt=<path to a .pt checkpoint written by run.py>")
    if run and run[0] != names[0] and not cfg.stage.previous_ckpt:
        before = names[names.index(run[0]) - 1]
        path = f"<run dir>/checkpoints/{before}_selected.pt"
        raise ConfigError(f"stage={cfg.stage.name} needs stage.previous_ckpt={path}")
    return asked


def _objective_key(cfg: DictConfig, proto: Protocol) -> str:
    """The results key returned to sweeps: auto follows the protocol, so a label-free sweep reads no bias label."""
    if cfg.objective == "auto":
        if proto.bias_labels or proto.split is None:
            return "val/acc_unbiased"  # val and oracle pick hyperparameters on validation, as before
        return f"{proto.split}/{cfg.selection_metric}"
    split, _, metric = str(cfg.objective).partition("/")
    if split not in EVAL_SPLITS or metric not in METRICS:
        raise ConfigError(
            f"objective must be auto or <split>/<metric> ({'|'.join(EVAL_SPLITS)} / {'|'.join(METRICS)}), "
            f"got {cfg.objective!r}"
        )
    return str(cfg.objective)


def _probe(cfg: DictConfig) -> ProbeSchedule:
    """`probe.*`: when the Trainer fits linear probes (off by default)."""
    node = cfg.get("probe") or {}
    values = {k: node[k] for k in ("every", "split", "steps", "at_init") if k in node}
    probe = ProbeSchedule(**values, seed=int(cfg.seed))
    probe.check()
    splits = [s for s in EVAL_SPLITS if s != "val_biased" or cfg.dataset.get("biased_val_size")]
    if probe.split not in splits:
        raise ConfigError(f"probe.split must be one of the evaluation splits {splits}, got {probe.split!r}")
    return probe


def _check_unread(unread: object, phases: list[str]) -> None:
    """`method.unread`: per phase of the method, the dotted config keys a run that stops after it does not read."""
    if unread is None:
        return
    lists = isinstance(unread, Mapping) and all(
        isinstance(keys, list) and all(isinstance(k, str) and k for k in keys) for keys in unread.values()
    )
    if not lists or not set(unread) <= set(phases):
        raise ConfigError(
            f"method.unread must map phases of the method ({', '.join(phases)}) to lists of dotted config keys, "
            f"got {unread!r}"
        )


def _phases(cfg: DictConfig, method: Mapping, proto: Protocol) -> dict[str, ph.Phase]:
    """Every phase resolved and checked, and the method's own keys."""
    seeds = {name: derive_seed(cfg.seed, f"{name}-batches") for name in ph.phases(method)}
    phases = ph.plan_phases(cfg, method, seeds)
    rows = method.get("row_depths")
    if not (isinstance(rows, list) and rows and all(part in PARTS for part in rows)):
        raise ConfigError(
            f"method.row_depths must list the model parts whose depths tell this method's table rows apart "
            f"({', '.join(PARTS)}), got {rows!r}"
        )
    final = method.get("final")
    if not isinstance(final, Mapping) or final.get("phase") not in phases:
        raise ConfigError(f"method.final.phase must be one of the phases {list(phases)}, got {final}")
    if final.get("head") not in phases[final["phase"]].cls.heads:
        heads, got = ", ".join(phases[final["phase"]].cls.heads), final.get("head")
        raise ConfigError(f"method.final.head must be one of {final['phase']}'s heads ({heads}), got {got!r}")
    _check_unread(method.get("unread"), list(phases))
    if proto.split == "val_biased" and not cfg.dataset.get("biased_val_size"):
        raise ConfigError(
            f"selection={proto.name} needs a validation split with the training bias ratio: "
            "set dataset.biased_val_size (e.g. 1000)"
        )
    return phases


def _method_info(config: dict) -> MethodInfo:
    m, models = config["method"], config["model"]
    for part in m["row_depths"]:
        if not isinstance(depth := models[part].get("depth"), int) or isinstance(depth, bool):
            raise ConfigError(f"model.{part}.depth must be an integer, got {depth!r}")
    return MethodInfo(
        name=m["name"],
        label=m.get("label", m["name"]),
        uses_bias_labels=bool(m.get("uses_bias_labels")),
        depths=[int(models[part]["depth"]) for part in m["row_depths"]],
        final_phase=m["final"]["phase"],
        final_head=m["final"]["head"],
        node=m,
    )


def _warn_depths(cfg: DictConfig, method: Mapping) -> None:
    """A method whose table rows are told apart by both experts' depths (DeNetDM) needs the shallow one shallower;
    equal depths are the control a search asks for (search.allow_equal), anything else is a warning."""
    if not {"shallow", "deep"} <= set(method.get("row_depths") or []):
        return
    shallow, deep = cfg.model.shallow.depth, cfg.model.deep.depth
    control = shallow == deep and (cfg.get("search") or {}).get("allow_equal")
    if isinstance(shallow, int) and isinstance(deep, int) and shallow >= deep and not control:
        log.warning(
            "model.shallow.depth=%d is not below model.deep.depth=%d: depth modulation needs the shallow expert "
            "shallower (equal depths are the control of search.allow_equal=true)",
            shallow,
            deep,
        )


def _recorded(cfg: DictConfig, device: torch.device, proto: Protocol) -> tuple[dict, Any]:
    """The resolved config as the run records it, and the dataset (built once, not loaded)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    config["device"] = device.type  # `auto` on a GPU machine and on a CPU machine are different runs
    # what the run does: CUDA graphs on a GPU (`auto` there); a CPU ignores the setting, so its runs compare equal
    config["captured"] = device.type == "cuda" and cfg.captured in ("auto", True)
    config["selection"] = proto.name  # `test` and `oracle` are one protocol
    config["method"] = ph.resolve(config["method"])  # each phase node complete: the checkpoints rebuild from it
    dataset = instantiate_checked(config["dataset"])
    # the data's identity, in the fingerprint: runs of other source files neither resume nor share a table cell
    config["data_digest"] = dataset.digest
    return config, dataset


def _logger(config: dict, run_dir: Path) -> Any:
    """The run's logger with its settings checked (W&B starts only when the run trains)."""
    logger = instantiate_checked(config["logger"], _partial_=True, _convert_="all")
    try:
        return logger(run_dir=str(run_dir), run_config=config)
    except TypeError as e:  # a key the logger does not take
        raise ConfigError(f"logger: {e}; see conf/logger/") from None


def plan(cfg: DictConfig, run_dir: str | Path, slot: int | None = None) -> Plan:
    """Check every value before anything is loaded or trained (`slot`: a sweep job's number, for its GPU)."""
    _check_flags(cfg)
    label_free = check_label_free_metric(cfg.selection_metric)
    proto = protocol(cfg.selection)
    device = resolve_device(str(cfg.device), slot)
    config, dataset = _recorded(cfg, device, proto)
    stages = _stages(cfg, list(ph.phases(config["method"])))
    phases = _phases(cfg, config["method"], proto)
    _warn_depths(cfg, config["method"])
    optimizer = instantiate_checked(cfg.optimizer, _convert_="all")
    check_optimizer(optimizer, (cfg.get("optimizer") or {}).get("betas"), [p.schedule for p in phases.values()])
    return Plan(
        run_dir=Path(run_dir),
        config=config,
        stages=stages,
        device=device,
        phases=phases,
        method=_method_info(config),
        models={part: config["model"][part] for part in PARTS},
        dataset=dataset,
        logger=_logger(config, Path(run_dir)),
        setting_name=str(cfg.get("experiment_name", "dataset_preset")),
        protocol=proto,
        label_free_metric=label_free,
        objective_key=_objective_key(cfg, proto),
        probe=_probe(cfg),
        optimizer=optimizer,
        seed=cfg.seed,
        amp=cfg.amp,
        resume=cfg.resume,
        captured=config["captured"],
        threads=cfg.threads,
        progress=None if cfg.progress == "auto" else cfg.progress,
        previous_ckpt=cfg.stage.previous_ckpt,
        max_loss=cfg.max_loss,
        eval_ckpt=cfg.stage.ckpt,
    )
