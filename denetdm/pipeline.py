"""From a composed config to a finished run: data, the method's phases, results.json.

run.py is only the command line: `train(cfg, run_dir)` takes the composed config and a directory and reads
no global Hydra state, so tests, benchmarks and other entry points call it (and the builders) directly.
The loop over phases has no method-specific branch: conf/method/<name>.yaml says what the phases are.
"""

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from denetdm import phases as ph
from denetdm import provenance
from denetdm.analysis.probes import ProbeSchedule
from denetdm.atomic import run_lock
from denetdm.checkpoint import load_checkpoint
from denetdm.checks import number, positive_int
from denetdm.cli import instantiate_checked
from denetdm.data.splits import BiasedData
from denetdm.engine import Fit, Schedule, StageResult, Trainer, evaluate_all, metric_key
from denetdm.errors import ConfigError
from denetdm.fingerprint import fingerprint
from denetdm.methods import BuildContext, Method
from denetdm.methods.base import PARTS
from denetdm.metrics import METRICS
from denetdm.models import is_convolutional
from denetdm.report import summary_table
from denetdm.seeding import derive_seed
from denetdm.selection import Protocol, check_label_free_metric, protocol
from denetdm.tracking import write_json

log = logging.getLogger("denetdm")

EVAL_SPLITS = ("val", "test", "val_biased")


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


def uses_channels_last(specs: Iterable[Mapping], input_shape: tuple[int, ...]) -> bool:
    """Images for convolutional backbones go channels-last (faster convolutions); MLPs would only pay a copy."""
    return len(input_shape) == 3 and any(is_convolutional(spec["name"]) for spec in specs)


def final_results(metrics: Mapping, phase: str, head: str) -> dict:
    """The deliverable model's metrics again as `<split>/<metric>`, the keys tables and sweeps read."""
    return {
        f"{split}/{m}": metrics[key]
        for split in EVAL_SPLITS
        for m in METRICS
        if (key := metric_key(phase, head, split, m)) in metrics
    }


def context(data: BiasedData, specs: Mapping, optimizer=None, lr: float = 0.0, weight_decay: float = 0.0):
    """What a phase is built from (denetdm.methods.BuildContext), for this data."""
    shape = tuple(data.input_shape)
    return BuildContext(shape, data.num_classes, data.num_biases, specs, data.train, optimizer, lr, weight_decay)


def evaluate_checkpoint(path: str, data: BiasedData) -> dict:
    """stage=eval: metrics of every head of a saved checkpoint on the evaluation splits."""
    ckpt = load_checkpoint(path)
    meta = ckpt["meta"]
    if list(data.input_shape) != list(meta["input_shape"]):
        raise ConfigError(
            f"{path} expects inputs of shape {meta['input_shape']}, dataset gives {list(data.input_shape)}"
        )
    method_cfg = meta["method"]
    method = ph.rebuild(method_cfg, ckpt["kind"], context(data, meta["model"]))
    try:
        method.load_state_dict(ckpt["method"])
    except RuntimeError as e:
        raise ConfigError(f"{path} does not fit this dataset's config ({str(e).splitlines()[0]})") from None
    out = evaluate_all(method.to(data.val.x.device), data, ckpt["kind"])
    final = method_cfg["final"]
    if ckpt["kind"] == final["phase"]:
        out.update(final_results(out, final["phase"], final["head"]))
    return out | {"checkpoint": str(path)}


@dataclass
class Plan:
    """A checked config: what runs, where, on which device, each phase's schedule, the selection protocol."""

    cfg: DictConfig
    run_dir: Path
    stages: list[str]  # the phases this process trains (and/or "eval")
    device: torch.device
    config: dict  # the resolved config (device resolved): results.json, W&B and every fingerprint read it
    schedules: dict[str, Schedule]
    protocol: Protocol
    objective_key: str
    probe: ProbeSchedule

    @property
    def phases(self) -> dict[str, Mapping]:
        """The method's phases in order."""
        return ph.phases(self.config["method"])

    def fingerprint(self, stage: str) -> dict:
        """This run's fingerprint for `stage`."""
        return fingerprint(self.config, stage)


MAX_THREADS = 1024  # torch would start them all


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
    check_label_free_metric(cfg.selection_metric)


def check_optimizer(optimizer, cfg: DictConfig, sources: Iterable[str]) -> None:
    """Build the optimizer once per schedule node on a dummy parameter, so that torch's own checks of its
    values (lr, betas, momentum, ...) fail before any data is loaded, as one clear error."""
    betas = (cfg.get("optimizer") or {}).get("betas")
    if betas is not None and not (
        isinstance(betas, Sequence) and len(betas) == 2 and all(_fraction(b) for b in betas)
    ):  # torch indexes betas before it checks them
        raise ConfigError(f"optimizer.betas must be two numbers in [0, 1), e.g. [0.9, 0.999], got {betas!r}")
    for source in sources:
        node = cfg[source]
        number(f"{source}.lr", node.lr, strict=True)
        number(f"{source}.weight_decay", node.weight_decay)
        try:
            optimizer([torch.zeros(1, requires_grad=True)], lr=node.lr, weight_decay=node.weight_decay)
        except (ValueError, TypeError, RuntimeError) as e:
            raise ConfigError(
                f"the optimizer rejects the {source} values: {e}; check optimizer.* and {source}.*"
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
    if run and run[0] != names[0] and not cfg.stage.stage1_ckpt:
        before = names[names.index(run[0]) - 1]
        raise ConfigError(f"stage={cfg.stage.name} needs stage.stage1_ckpt=<run dir>/checkpoints/{before}_selected.pt")
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


def plan(cfg: DictConfig, run_dir: Path, slot: int | None = None) -> Plan:
    """Check every value before anything is loaded or trained (`slot`: a sweep job's number, for its GPU)."""
    _check_flags(cfg)
    proto = protocol(cfg.selection)
    device = resolve_device(str(cfg.device), slot)
    config = OmegaConf.to_container(cfg, resolve=True)
    config["device"] = device.type  # `auto` on a GPU machine and on a CPU machine are different runs
    # what the run does: CUDA graphs on a GPU (`auto` there); a CPU ignores the setting, so its runs compare equal
    config["captured"] = device.type == "cuda" and cfg.captured in ("auto", True)
    config["selection"] = proto.name  # `test` and `oracle` are one protocol
    method = config["method"]
    names = list(ph.phases(method))
    stages = _stages(cfg, names)
    schedules = {
        name: ph.schedule(cfg, name, node, derive_seed(cfg.seed, f"{name}-batches"))
        for name, node in ph.phases(method).items()
    }
    ph.check(method, schedules)
    if method.get("final", {}).get("phase") not in names:
        raise ConfigError(f"method.final.phase must be one of the phases {names}, got {method.get('final')}")
    if proto.split == "val_biased" and not cfg.dataset.get("biased_val_size"):
        raise ConfigError(
            f"selection={proto.name} needs a validation split with the training bias ratio: "
            "set dataset.biased_val_size (e.g. 1000)"
        )
    probe = _probe(cfg)
    return Plan(cfg, Path(run_dir), stages, device, config, schedules, proto, _objective_key(cfg, proto), probe)


def _probe(cfg: DictConfig) -> ProbeSchedule:
    """`probe.*`: when the Trainer fits linear probes (off by default)."""
    node = cfg.get("probe") or {}
    probe = ProbeSchedule(node.get("every", 0), node.get("split", "val"), node.get("steps", 100), int(cfg.seed))
    probe.check()
    splits = [s for s in EVAL_SPLITS if s != "val_biased" or cfg.dataset.get("biased_val_size")]
    if probe.split not in splits:
        raise ConfigError(f"probe.split must be one of the evaluation splits {splits}, got {probe.split!r}")
    return probe


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
    sizes = ", ".join(f"{len(s)} {name}" for name, s in {"train": data.train, **data.splits()}.items())
    log.info("%s: %s samples on %s", data.name, sizes, p.device)
    target = p.config["model"]["target"]
    log.info(
        "setting: %s (target %s-%s%s)", p.config.get("experiment_name", "dataset_preset"), target.get("name"),
        target.get("depth"), ", ImageNet-pretrained" if target.get("pretrained") else "",
    )  # fmt: skip
    return data, channels_last


class StageRunner:
    """Trains (or loads) the method's phases in order with one Trainer; collects their results.json entries."""

    def __init__(self, p: Plan, data: BiasedData, channels_last: bool, optimizer, trainer: Trainer) -> None:
        self.p, self.data, self.optimizer, self.trainer = p, data, optimizer, trainer
        self.fmt = torch.channels_last if channels_last else torch.preserve_format
        self.specs = {k: p.config["model"][k] for k in PARTS}  # a loaded checkpoint brings its own
        self.results: dict = {}
        self.times = {name: 0.0 for name in p.phases}

    def meta(self, phase: str) -> dict:
        """What a checkpoint of `phase` stores: input shape, classes, model specs, the method, the fingerprint."""
        shape, classes = list(self.data.input_shape), self.data.num_classes
        meta = {"input_shape": shape, "num_classes": classes, "model": self.specs, "method": self.p.config["method"]}
        return meta | {"config": self.p.fingerprint(phase)}

    def build(self, phase: str, previous: Method | None) -> Method:
        """The phase after `previous`, freshly initialised from the run's seed, on the run's device."""
        node = self.p.cfg[self.p.phases[phase]["schedule"]]
        ctx = context(self.data, self.specs, self.optimizer, node.lr, node.weight_decay)
        torch.manual_seed(derive_seed(self.p.cfg.seed, f"{phase}-init"))
        method = ph.build(phase, self.p.phases[phase], ctx, previous).to(self.p.device, memory_format=self.fmt)
        method.amp = self.p.cfg.amp
        return method

    def begin(self, phase: str, method: Method) -> Fit:
        """The trainer's loop state for `phase` (resumed where a checkpoint is)."""
        schedule, meta = self.p.schedules[phase], self.meta(phase)
        return self.trainer.begin(phase, method, self.data, schedule, meta, self.p.cfg.resume, self.data.augment)

    def record(self, phase: str, r: StageResult) -> None:
        """A trained phase's entries of results.json."""
        self.results.update(r.metrics)
        self.results[f"{phase}/selected_epoch"], self.times[phase] = r.selected_epoch, r.elapsed_s

    def fit(self, phase: str, previous: Method | None) -> Method:
        """Build the phase after `previous` and train it (or resume it); its selected checkpoint is loaded."""
        method = self.build(phase, previous)
        fit = self.begin(phase, method)
        self.record(phase, self.trainer.fit_from(fit))
        return method

    def load(self, phase: str) -> Method:
        """The phase before the first one run, from `stage.stage1_ckpt`, evaluated for the results."""
        path = self.p.cfg.stage.stage1_ckpt
        ckpt = load_checkpoint(path, f"{phase} checkpoint")
        if ckpt["kind"] != phase:
            raise ConfigError(f"stage.stage1_ckpt={path} holds a {ckpt['kind']} checkpoint, not {phase}")
        self.specs.update({k: v for k, v in ckpt["meta"]["model"].items() if k != "target"})
        method = ph.rebuild(self.p.config["method"], phase, context(self.data, self.specs))
        method = method.to(self.p.device, memory_format=self.fmt)
        method.load_state_dict(ckpt["method"])
        self.results.update(evaluate_all(method, self.data, phase))
        return method

    def run(self) -> dict:
        """The configured phases in order; returns their results.json entries."""
        if "eval" in self.p.stages:
            self.results.update(evaluate_checkpoint(self.p.cfg.stage.ckpt, self.data))
        names, run = list(self.p.phases), self.trained()
        previous = None
        if run and run[0] != names[0]:
            previous = self.load(names[names.index(run[0]) - 1])
        for phase in run:
            previous = self.fit(phase, previous)
        return self.collect()

    def trained(self) -> list[str]:
        """The phases this run trains."""
        return [s for s in self.p.stages if s != "eval"]

    def collect(self) -> dict:
        """The results.json entries of the phases run: the final model's, the separation, the times."""
        final = self.p.config["method"]["final"]
        if final["phase"] in self.trained():
            self.results.update(final_results(self.results, final["phase"], final["head"]))
        self.results.update(separation(self.results))
        return self.results | {f"time/{k}_s": v for k, v in self.times.items()}


def separation(results: dict, phase: str = "stage1") -> dict:
    """How far a phase's shallow and deep heads split (validation conflicting accuracy, shallow minus deep):
    `<phase>/separation` where both heads were measured, else nothing."""
    shallow, deep = (results.get(f"{phase}/{h}/val/acc_conflicting") for h in ("shallow", "deep"))
    if isinstance(shallow, float) and isinstance(deep, float):
        return {f"{phase}/separation": shallow - deep}
    return {}


def _describe(p: Plan) -> dict:
    """What results.json says about the method and the selection protocol."""
    m = p.config["method"]
    return {
        "method": m["name"],
        "method_label": m.get("label", m["name"]),
        "uses_bias_labels": bool(m.get("uses_bias_labels")),
        "seed": p.cfg.seed,
        "selection": p.protocol.name,
        "selection_oracle": p.protocol.name == "oracle",
        "selection_bias_labels": p.protocol.bias_labels,
        "objective_key": p.objective_key,
    }


def train(cfg: DictConfig, run_dir: str | Path, pruning: dict | None = None, slot: int | None = None) -> dict:
    """Run the configured phases in `run_dir` and return the results dict (also written to results.json).
    `pruning` ({storage, study, number, pruner}: a sweep trial's) reports each epoch of the final phase."""
    p = plan(cfg, run_dir, slot)
    if (done := _finished(p)) is not None:
        print(summary_table(done))
        return done
    optimizer = prepare_run(p, cfg)
    with run_lock(p.run_dir):
        results = _run(p, cfg, optimizer, pruning)
    print(summary_table(results))
    return results


def prepare_run(p: Plan, cfg: DictConfig):
    """Threads, the oracle warning, the checked optimizer factory and the run directory, before any data."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if p.protocol.name == "oracle":
        log.warning("selection=oracle: checkpoints are chosen on the TEST set (the reference code's protocol)")
    optimizer = instantiate_checked(cfg.optimizer, _convert_="all")
    check_optimizer(optimizer, cfg, sorted({node["schedule"] for node in p.phases.values()}))
    p.run_dir.mkdir(parents=True, exist_ok=True)
    return optimizer


def setup(p: Plan, cfg: DictConfig, optimizer, pruning: dict | None, data=None) -> tuple[StageRunner, float]:
    """Load the data (unless given), build the logger, the trainer and the stage runner; the data time."""
    t0 = time.time()
    data, channels_last = data or _load_data(p)
    t_data = time.time() - t0
    logger = instantiate_checked(cfg.logger, _partial_=True, _convert_="all")(
        run_dir=str(p.run_dir), run_config=p.config
    )
    progress = None if cfg.progress == "auto" else cfg.progress
    trainer = Trainer(p.run_dir, logger, p.protocol.name, progress, cfg.selection_metric, p.probe, p.config["captured"])
    if pruning is not None:
        from denetdm.pruning import Reporter

        final = p.config["method"]["final"]
        key = f"{final['phase']}/{final['head']}/{p.objective_key}"
        trainer.on_epoch = Reporter(**pruning, phase=final["phase"], key=key, run_dir=p.run_dir)
    return StageRunner(p, data, channels_last, optimizer, trainer), t_data


def conclude(runner: StageRunner, phase_results: dict, t_data: float) -> dict:
    """results.json from the phases' entries (logged as the W&B summary), then the `done` marker."""
    p, data = runner.p, runner.data
    results = _describe(p) | phase_results
    results["time/data_s"] = t_data
    results["time/total_s"] = sum(v for k, v in results.items() if k.startswith("time/"))
    results["objective"] = results.get(p.objective_key, float("nan"))
    results["provenance"] = {"commit": provenance.commit(), "machine": provenance.machine(p.device)}
    results |= {"stages": p.stages, "dataset": {"name": data.name, **data.info}, "config": p.config}
    runner.trainer.logger.summary(results)
    write_json(p.run_dir / "results.json", results)
    (p.run_dir / "done").write_text("")
    return results


def _run(p: Plan, cfg: DictConfig, optimizer, pruning: dict | None) -> dict:
    """Load the data, build the logger and the trainer, run the phases, write results.json and `done`."""
    runner, t_data = setup(p, cfg, optimizer, pruning)
    with runner.trainer.logger:
        return conclude(runner, runner.run(), t_data)
