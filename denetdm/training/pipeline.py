"""One lifecycle for 1…K runs: plan, finished check, lock, data, logger, phases, results.json, `done`.

A plain run is a stack of one: `train(cfg, run_dir)` is `train_runs([cfg], [run_dir])`, and the stacked launcher
calls `train_runs` with the runs that can train together. The loop over phases has no method-specific branch:
conf/method/<name>.yaml says what the phases are. Nothing here reads global Hydra state, so tests, benchmarks
and other entry points call it directly.
"""

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import torch
from omegaconf import DictConfig

from denetdm import provenance
from denetdm.data.splits import BiasedData
from denetdm.errors import ConfigError, DenetdmError, WriteError
from denetdm.files.atomic import atomic_write
from denetdm.files.jsonlines import write_json
from denetdm.files.lock import folder_lock
from denetdm.fingerprint import differences, fingerprint, value_at
from denetdm.methods import BuildContext, Method
from denetdm.methods import denetdm_reference as reference
from denetdm.metrics import METRICS
from denetdm.models import is_convolutional
from denetdm.reporting.summary import summary_table
from denetdm.seeding import derive_seed
from denetdm.training import phases as ph
from denetdm.training.checkpoint import load_checkpoint
from denetdm.training.evaluation import evaluate_all, metric_key
from denetdm.training.loop import StageResult, Trainer, fit_together
from denetdm.training.plan import EVAL_SPLITS, Plan, plan

log = logging.getLogger("denetdm")


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


def from_reference(state: Mapping, data: BiasedData, method: Mapping) -> dict:
    """A state dict the reference code saved (denetdm.methods.denetdm_reference) as our checkpoint of its phase."""
    family, kind, specs = reference.layout(state)
    if data.name != family:
        raise ConfigError(f"the file is the reference's {family} model; evaluate it with experiment=paper_{family}")
    if kind not in (method.get("phases") or {}):
        raise ConfigError(f"the file is the reference's DeNetDM {kind}; evaluate it with method=denetdm")
    torch.manual_seed(0)  # a stage-2 file lacks the shallow expert: built, never read (stage 2 predicts the target)
    ours = ph.rebuild(method, kind, context(data, specs)).state_dict()
    meta = {"input_shape": list(data.input_shape), "num_classes": data.num_classes, "model": specs, "method": method}
    return {"kind": kind, "meta": meta, "method": reference.mapped(state, kind, ours)}


def evaluate_checkpoint(path: str, data: BiasedData, method: Mapping) -> dict:
    """stage=eval: metrics of every head of a saved checkpoint (ours, or one the reference code saved, read as
    `method`'s) on the evaluation splits."""
    ckpt = load_checkpoint(path, reference=lambda state: from_reference(state, data, method))
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


class StageRunner:
    """One run's phases: built (or loaded) in order and trained by its Trainer; its results.json entries."""

    def __init__(self, p: Plan, data: BiasedData, channels_last: bool, trainer: Trainer) -> None:
        self.p, self.data, self.trainer = p, data, trainer
        self.fmt = torch.channels_last if channels_last else torch.preserve_format
        self.specs = p.models
        self.results: dict = {}
        self.times = {name: 0.0 for name in p.phases}

    def meta(self, phase: str) -> dict:
        """What a checkpoint of `phase` stores: input shape, classes, model specs, the method, the fingerprint."""
        shape, classes = list(self.data.input_shape), self.data.num_classes
        meta = {"input_shape": shape, "num_classes": classes, "model": self.specs, "method": self.p.method.node}
        return meta | {"config": self.p.fingerprint(phase)}

    def build(self, phase: str, previous: Method | None) -> Method:
        """The phase after `previous`, freshly initialised from the run's seed, on the run's device."""
        s = self.p.phases[phase].schedule
        ctx = context(self.data, self.specs, self.p.optimizer, s.lr, s.weight_decay)
        torch.manual_seed(derive_seed(self.p.seed, f"{phase}-init"))
        method = self.p.phases[phase].build(ctx, previous).to(self.p.device, memory_format=self.fmt)
        method.amp = self.p.amp
        return method

    def begin(self, phase: str, method: Method):
        """The trainer's loop state for `phase` (resumed where a checkpoint is)."""
        schedule, meta = self.p.phases[phase].schedule, self.meta(phase)
        return self.trainer.begin(phase, method, self.data, schedule, meta, self.p.resume)

    def record(self, phase: str, r: StageResult, method: Method) -> None:
        """A trained phase's entries of results.json, and the method's verdicts and warnings about it."""
        self.results.update(r.metrics)
        self.results[f"{phase}/selected_epoch"], self.times[phase] = r.selected_epoch, r.elapsed_s
        self.diagnose(phase, method, r.metrics)

    def diagnose(self, phase: str, method: Method, metrics: dict) -> None:
        """The method's verdicts on a trained phase (results.json entries) and its warnings, logged and kept."""
        verdicts = method.diagnose(phase, metrics, self.p.phases[phase].schedule.epochs)
        for warning in verdicts.pop("warnings", []):
            log.warning("%s", warning)
            self.results.setdefault("warnings", []).append(warning)
        self.results.update(verdicts)

    def start(self) -> Method | None:
        """Before the first trained phase: stage=eval's evaluation, and the phase before it from its checkpoint
        (`stage.previous_ckpt`) when the run starts later than the method's first phase."""
        if self.p.eval_ckpt:
            self.results.update(evaluate_checkpoint(self.p.eval_ckpt, self.data, self.p.method.node))
        names, run = list(self.p.phases), self.p.trained
        if not run or run[0] == names[0]:
            return None
        phase = names[names.index(run[0]) - 1]
        ckpt = load_checkpoint(self.p.previous_ckpt, f"{phase} checkpoint")
        if ckpt["kind"] != phase:
            where = f"stage.previous_ckpt={self.p.previous_ckpt}"
            raise ConfigError(f"{where} holds a {ckpt['kind']} checkpoint, not {phase}")
        check_previous(ckpt, self.p.fingerprint(phase), where=f"stage.previous_ckpt={self.p.previous_ckpt}")
        method = ph.skeleton(self.p.phases.values(), phase, context(self.data, self.specs))
        method = method.to(self.p.device, memory_format=self.fmt)
        method.load_state_dict(ckpt["method"])
        self.results.update(metrics := evaluate_all(method, self.data, phase))
        self.diagnose(phase, method, metrics)
        return method

    def collect(self) -> dict:
        """The results.json entries of the phases run, the final model's again, the times."""
        m = self.p.method
        if m.final_phase in self.p.trained:
            self.results.update(final_results(self.results, m.final_phase, m.final_head))
        return self.results | {f"time/{k}_s": v for k, v in self.times.items()}


def check_previous(ckpt: dict, ours: dict, where: str) -> None:
    """Refuse a previous phase's checkpoint trained on other data or with other experts than the run's config
    (`ours`: its fingerprint of that phase) names: results.json, tables and W&B report the config's."""
    saved = ckpt["meta"].get("config") or {}
    parts = [f"model.{k}" for k in ckpt["meta"]["model"] if k != "target"]
    keys = ("dataset.name", "dataset", "data_digest", *parts)  # another dataset is named as such first
    diff = list(dict.fromkeys(d for k in keys for d in differences(value_at(saved, k), value_at(ours, k), k + ".")))
    if not diff:
        return
    if diff[0] == "data_digest":
        raise ConfigError(f"{where} was trained on other data files than this run reads; train stage 1 on them")
    then, now = (json.dumps(value_at(tree, diff[0])) for tree in (saved, ours))
    more = f" (and {', '.join(diff[1:4])}{'...' if len(diff) > 4 else ''})" if len(diff) > 1 else ""
    raise ConfigError(
        f"{where} was trained with {diff[0]}={then}{more}, this run has {now}: set {diff[0]}={then} (the run "
        "reports the config's data and experts, so they must be the checkpoint's), or train stage 1 for this setting"
    )


def _describe(p: Plan) -> dict:
    """What results.json says about the method and the selection protocol."""
    m = p.method
    return {
        "method": m.name,
        "method_label": m.label,
        "depths": m.depths,
        "uses_bias_labels": m.uses_bias_labels,
        "seed": p.seed,
        "selection": p.protocol.name,
        "selection_oracle": p.protocol.name == "oracle",
        "selection_bias_labels": p.protocol.bias_labels,
        "objective_key": p.objective_key,
    }


def finished(p: Plan) -> dict | None:
    """results.json of a finished run of the same config in this directory, else None."""
    path = p.run_dir / "results.json"
    if not (p.resume and (p.run_dir / "done").exists() and path.exists()) or "eval" in p.stages:
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


def prepare(p: Plan) -> None:
    """Threads, the oracle warning and the run directory, before any data."""
    if p.threads:
        torch.set_num_threads(p.threads)
    if p.protocol.name == "oracle":
        log.warning("selection=oracle: checkpoints are chosen on the TEST set (the reference code's protocol)")
    p.run_dir.mkdir(parents=True, exist_ok=True)


def load_data(p: Plan, vmapped: bool = False) -> tuple[BiasedData, bool]:
    """The dataset on the training device, and whether its images are channels-last (never for vmapped members: on
    a lent H200 a vmapped ResNet stack stopped with "NYI: querying is_contiguous inside of vmap for memory_format
    other than torch.contiguous_format")."""
    data = p.dataset.load()
    channels_last = uses_channels_last(p.models.values(), data.input_shape) and not vmapped
    data = data.to(p.device, channels_last=channels_last)
    sizes = ", ".join(f"{len(s)} {name}" for name, s in {"train": data.train, **data.splits()}.items())
    log.info("%s: %s samples on %s", data.name, sizes, p.device)
    target = p.models["target"]
    pretrained = ", ImageNet-pretrained" if target.get("pretrained") else ""
    log.info("setting: %s (target %s-%s%s)", p.setting_name, target.get("name"), target.get("depth"), pretrained)
    return data, channels_last


def load_all(plans: Sequence[Plan], vmapped: bool = False) -> dict[str, tuple[BiasedData, bool]]:
    """Each distinct dataset of the runs, by `Plan.data_key`; several are loaded (or generated) in parallel threads:
    generation is torch and numpy work that releases the GIL, so 16 Colored MNIST seeds are made at once."""
    distinct: dict[str, Plan] = {}
    for p in plans:
        distinct.setdefault(p.data_key, p)
    if len(distinct) <= 1:
        return {key: load_data(p, vmapped) for key, p in distinct.items()}
    with ThreadPoolExecutor(min(len(distinct), os.cpu_count() or 1)) as pool:
        loaded = pool.map(lambda p: load_data(p, vmapped), distinct.values())
        return dict(zip(distinct, loaded, strict=True))


def open_run(p: Plan, data: tuple[BiasedData, bool], pruning: dict | None) -> StageRunner:
    """The run's logger, trainer (reporting to a pruning sweep's trial where one is given) and stage runner."""
    trainer = Trainer(p.run_dir, p.logger, p.protocol, p.label_free_metric, p.progress, p.probe, p.captured, p.max_loss)
    if pruning is not None:
        from denetdm.sweeps.pruning import Reporter

        key = f"{p.method.final_phase}/{p.method.final_head}/{p.objective_key}"
        trainer.recorder.on_epoch = Reporter(**pruning, phase=p.method.final_phase, key=key, run_dir=p.run_dir)
    return StageRunner(p, *data, trainer)


def conclude(runner: StageRunner, t_data: float) -> dict:
    """results.json from the phases' entries (logged as the W&B summary), then the `done` marker."""
    p, data = runner.p, runner.data
    results = _describe(p) | runner.collect()
    results["time/data_s"] = t_data
    results["time/total_s"] = sum(v for k, v in results.items() if k.startswith("time/"))
    results["objective"] = results.get(p.objective_key, float("nan"))
    results["provenance"] = {"commit": provenance.commit(), "machine": provenance.machine(p.device)}
    results |= {"stages": p.stages, "dataset": {"name": data.name, **data.info}, "config": p.config}
    runner.trainer.recorder.logger.summary(results)
    try:
        write_json(p.run_dir / "results.json", results)
        with atomic_write(p.run_dir / "done"):
            pass
    except OSError as e:
        raise WriteError(
            f"could not write {p.run_dir / 'results.json'} ({e.strerror or e}); every phase is trained and its "
            "checkpoints are saved: free space and run the same command again (nothing is trained again)"
        ) from None
    return results


def train_phases(runners: Sequence[StageRunner], vectorize: bool) -> list[DenetdmError | None]:
    """Every run's phases in order, trained together phase by phase (runs with other phases: one group after
    another); the error that stopped each run (a pruned trial, a non-finite loss), or None. A run stopped in one
    phase trains no later one."""
    groups: dict[tuple, list[int]] = {}
    for k, r in enumerate(runners):
        groups.setdefault(tuple(r.p.trained), []).append(k)
    if len(groups) > 1:
        errors: list[DenetdmError | None] = [None] * len(runners)
        for ks in groups.values():
            for k, e in zip(ks, train_phases([runners[k] for k in ks], vectorize), strict=True):
                errors[k] = e
        return errors
    previous = [r.start() for r in runners]
    errors = [None] * len(runners)
    for phase in runners[0].p.trained if runners else []:
        live = [k for k, e in enumerate(errors) if e is None]
        for k in live:
            previous[k] = runners[k].build(phase, previous[k])
        fits = [runners[k].begin(phase, previous[k]) for k in live]
        done = fit_together([runners[k].trainer for k in live], fits, vectorize)
        for k, result in zip(live, done, strict=True):
            if isinstance(result, DenetdmError):
                errors[k] = result
            else:
                runners[k].record(phase, result, previous[k])
    return errors


def train_runs(
    cfgs: Sequence[DictConfig],
    run_dirs: Sequence,
    prunings: Sequence[dict | None] | None = None,
    slot: int | None = None,
    vectorize: bool | None = None,
) -> list[dict | DenetdmError]:
    """Train runs (one, or a stack whose configs share `stacked.stack_key`), each into its own directory; their
    results, or the error that stopped each. Finished runs are read back. `prunings`: each run's sweep trial to
    report to; `vectorize`: vmap the members (None: on CUDA, where it pays)."""
    plans = [plan(cfg, d, slot) for cfg, d in zip(cfgs, run_dirs, strict=True)]
    prunings = prunings or [None] * len(plans)
    out: list = [finished(p) for p in plans]
    todo = [i for i, r in enumerate(out) if r is None]
    with ExitStack() as held:
        for i in todo:
            prepare(plans[i])
            held.enter_context(folder_lock(plans[i].run_dir))
        on_gpu = bool(todo) and plans[todo[0]].device.type == "cuda"
        vectorize = on_gpu if vectorize is None else vectorize
        t0 = time.time()
        datas = load_all([plans[i] for i in todo], vectorize and len(todo) > 1)
        t_data = time.time() - t0
        runners = [open_run(plans[i], datas[plans[i].data_key], prunings[i]) for i in todo]
        members = [str(r.p.run_dir) for r in runners]
        for k, runner in enumerate(runners):
            held.enter_context(runner.trainer.recorder.logger)
            if len(plans) > 1:  # stack.json: the stack a run trained in
                write_json(runner.p.run_dir / "stack.json", {"members": members, "member": k})
        errors = train_phases(runners, vectorize)
        for runner, error in zip(runners, errors, strict=True):
            if error is not None:
                _drain(runner)
        for k, (i, runner) in enumerate(zip(todo, runners, strict=True)):
            out[i] = errors[k] or conclude(runner, t_data if k == 0 else 0.0)  # the loading counted once
    for r in out:
        if isinstance(r, dict):
            print(summary_table(r))
    return out


def _drain(runner: StageRunner) -> None:
    """Wait for a stopped run's queued files (a GPU run's last records and checkpoints) before it returns."""
    try:
        runner.trainer.recorder.writer.flush()
    except DenetdmError:
        pass  # the error that stopped the run is the one to report; the resume starts from the files written


def train(cfg: DictConfig, run_dir: str | Path, pruning: dict | None = None, slot: int | None = None) -> dict:
    """Run the configured phases in `run_dir` and return the results dict (also written to results.json).
    `pruning` ({storage, study, number, pruner}: a sweep trial's) reports each epoch of the final phase."""
    (result,) = train_runs([cfg], [run_dir], [pruning], slot)
    if isinstance(result, DenetdmError):
        raise result
    return result
