"""Train and evaluate DeNetDM: `python run.py dataset=cmnist severity=4` (Hydra overrides; `-m` sweeps).

Everything is built from the config at the top of `train`, then the stages run in a flat loop. The return
value of `main` is the validation unbiased accuracy of the selected target model (the sweep objective).
"""

import json
import logging
import math
import sys
import time
from pathlib import Path

import hydra
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from denetdm.checkpoint import load_checkpoint
from denetdm.cli import check_group_choices, check_launcher, install_sweeper, instantiate_checked, quote_numeric_choices
from denetdm.engine import Trainer, evaluate_all
from denetdm.errors import ConfigError, DenetdmError
from denetdm.methods import DeNetDMStage1, DeNetDMStage2
from denetdm.metrics import METRICS
from denetdm.models import TargetModel, TwoExpertModel, build_backbone
from denetdm.report import objective, summary_table
from denetdm.seeding import derive_seed
from denetdm.tracking import write_json

log = logging.getLogger("denetdm")

# config keys that do not change the numbers, left out of the resume fingerprint
_NOT_NUMERIC = ("root", "download", "cache_dir")


def _fingerprint(cfg: DictConfig, stage: str) -> dict:
    data = {k: v for k, v in OmegaConf.to_container(cfg.dataset, resolve=True).items() if k not in _NOT_NUMERIC}
    fp = {
        "seed": cfg.seed,
        "selection": cfg.selection,
        "dataset": data,
        "optimizer": OmegaConf.to_container(cfg.optimizer),
    }
    fp["model"] = {k: OmegaConf.to_container(cfg.model[k], resolve=True) for k in ("deep", "shallow")}
    fp["stage1"] = OmegaConf.to_container(cfg.stage1, resolve=True)
    if stage == "stage2":
        fp["model"]["target"] = OmegaConf.to_container(cfg.model.target, resolve=True)
        fp["stage2"] = OmegaConf.to_container(cfg.stage2, resolve=True)
    return fp


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA device is visible; use device=cpu or device=auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {name!r}") from None


def build_stage1(meta: dict, optimizer=None, lr: float = 0.0, weight_decay: float = 0.0) -> DeNetDMStage1:
    """The stage-1 method from model specs (meta["model"]) and the input shape."""
    shape, m = tuple(meta["input_shape"]), meta["model"]
    model = TwoExpertModel(build_backbone(m["deep"], shape), build_backbone(m["shallow"], shape), meta["num_classes"])
    return DeNetDMStage1(model, optimizer, lr=lr, weight_decay=weight_decay)


def build_stage2(meta: dict, stage1: DeNetDMStage1, optimizer=None, **hparams) -> DeNetDMStage2:
    """The stage-2 method around a trained stage-1 model (the target is built freshly from meta)."""
    target = TargetModel(build_backbone(meta["model"]["target"], tuple(meta["input_shape"])), stage1.model.head)
    return DeNetDMStage2(stage1.model, target, optimizer, **hparams)


def _flat(prefix: str, metrics: dict) -> dict:
    # "<split>/<head>/<metric>" -> "<prefix>/<head>/<split>/<metric>"
    out = {}
    for key, value in metrics.items():
        split, head, metric = key.split("/")
        out[f"{prefix}/{head}/{split}/{metric}"] = value
    return out


def _target_results(metrics: dict) -> dict:
    # the stage-2 target's metrics under the top-level keys that tables and sweeps read: "<split>/<metric>"
    return {f"{split}/{m}": metrics[f"{split}/target/{m}"] for split in ("val", "test") for m in METRICS}


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Run the configured stages in `run_dir` and return the results dict (also written to results.json)."""
    if cfg.selection not in ("val", "test", "last"):
        raise ConfigError(f"selection must be val, test or last, got {cfg.selection!r}")
    stages = list(cfg.stage.stages)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = _device(str(cfg.device))
    progress = None if cfg.progress == "auto" else bool(cfg.progress)
    if cfg.selection == "test":
        log.warning("selection=test: checkpoints are chosen on the TEST set (the reference code's oracle protocol)")

    results_path = run_dir / "results.json"
    if cfg.resume and (run_dir / "done").exists() and results_path.exists():
        results = json.loads(results_path.read_text())
        if results.get("fingerprint") == _fingerprint(cfg, stages[-1]) and results.get("stages") == stages:
            log.info("%s already finished; showing its results (resume=false trains again)", run_dir)
            print(summary_table(results))
            return results

    # --- build everything from the config -------------------------------------------------------------
    t0 = time.time()
    data = instantiate_checked(cfg.dataset).load()
    meta = {
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "model": {k: OmegaConf.to_container(cfg.model[k], resolve=True) for k in ("deep", "shallow", "target")},
    }
    # convolutions run faster on channels-last tensors; MLPs would only pay for a copy
    channels_last = any(isinstance(m, torch.nn.Conv2d) for m in build_stage1(meta).modules())
    data = data.to(device, channels_last=channels_last)
    t_data = time.time() - t0
    log.info(
        "%s: %d train / %d val / %d test samples on %s",
        data.name,
        len(data.train),
        len(data.val),
        len(data.test),
        device,
    )
    optimizer = instantiate_checked(cfg.optimizer, _convert_="all")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    logger = instantiate_checked(cfg.logger, _partial_=True, _convert_="all")(run_dir=str(run_dir), run_config=resolved)
    trainer = Trainer(run_dir, logger, cfg.selection, progress)
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    s1, s2 = cfg.stage1, cfg.stage2
    results: dict = {"seed": cfg.seed, "selection": cfg.selection, "selection_oracle": cfg.selection == "test"}
    results["stages"] = stages
    times = {"stage1": 0.0, "stage2": 0.0}

    def fit(stage: str, method, schedule: DictConfig):
        seed = derive_seed(cfg.seed, f"{stage}-batches")
        meta_ = {**meta, "config": _fingerprint(cfg, stage)}
        args = (schedule.epochs, schedule.batch_size, schedule.select, seed, meta_)
        method.amp = bool(cfg.amp)
        return trainer.fit(stage, method, data, *args, resume=cfg.resume, augment=data.augment)

    # --- the stages ------------------------------------------------------------------------------------
    with logger:
        stage1 = None
        if "eval" in stages:
            results.update(_evaluate_checkpoint(cfg, data))
        if "stage1" in stages:
            torch.manual_seed(derive_seed(cfg.seed, "stage1-init"))
            stage1 = build_stage1(meta, optimizer, lr=s1.lr, weight_decay=s1.weight_decay)
            stage1 = stage1.to(device, memory_format=memory_format)
            r1 = fit("stage1", stage1, s1)
            results.update(_flat("stage1", r1.metrics))
            results["stage1/selected_epoch"], times["stage1"] = r1.selected_epoch, r1.elapsed_s
        elif "stage2" in stages:
            if not cfg.stage.stage1_ckpt:
                raise ConfigError("stage=stage2 needs stage.stage1_ckpt=<run dir>/checkpoints/stage1_selected.pt")
            ckpt = load_checkpoint(cfg.stage.stage1_ckpt, "stage-1 checkpoint")
            if ckpt["kind"] != "stage1":
                raise ConfigError(
                    f"stage.stage1_ckpt={cfg.stage.stage1_ckpt} holds a {ckpt['kind']} checkpoint, not stage1"
                )
            meta["model"].update({k: ckpt["meta"]["model"][k] for k in ("deep", "shallow")})
            stage1 = build_stage1(ckpt["meta"]).to(device, memory_format=memory_format)
            stage1.load_state_dict(ckpt["method"])
            results.update(_flat("stage1", evaluate_all(stage1, data)))
        if "stage2" in stages:
            torch.manual_seed(derive_seed(cfg.seed, "stage2-init"))
            method = build_stage2(
                meta,
                stage1,
                optimizer,
                lr=s2.lr,
                weight_decay=s2.weight_decay,
                poe_weight=s2.poe_weight,
                dist_weight=s2.dist_weight,
                temperature=s2.temperature,
            ).to(device, memory_format=memory_format)
            r2 = fit("stage2", method, s2)
            results.update(_target_results(r2.metrics))
            results["stage2/selected_epoch"], times["stage2"] = r2.selected_epoch, r2.elapsed_s

        results.update({f"time/{k}_s": v for k, v in times.items()})
        results["time/data_s"] = t_data
        results["time/total_s"] = times["stage1"] + times["stage2"] + t_data
        results["dataset"] = {"name": data.name, **data.info}
        results["fingerprint"] = _fingerprint(cfg, stages[-1]) if "eval" not in stages else None
        results["config"] = resolved
        logger.summary(results)
    write_json(results_path, results)
    (run_dir / "done").write_text("")
    print(summary_table(results))
    return results


def _evaluate_checkpoint(cfg: DictConfig, data) -> dict:
    """stage=eval: metrics of every head of a saved checkpoint on validation and test."""
    if not cfg.stage.ckpt:
        raise ConfigError("stage=eval needs stage.ckpt=<path to a .pt checkpoint written by run.py>")
    ckpt = load_checkpoint(cfg.stage.ckpt)
    meta = ckpt["meta"]
    if list(data.input_shape) != list(meta["input_shape"]):
        raise ConfigError(
            f"{cfg.stage.ckpt} expects inputs of shape {meta['input_shape']}, dataset gives {list(data.input_shape)}"
        )
    stage1 = build_stage1(meta)
    method = stage1 if ckpt["kind"] == "stage1" else build_stage2(meta, stage1)
    method.load_state_dict(ckpt["method"])
    metrics = evaluate_all(method.to(next(iter(data.splits().values())).x.device), data)
    out = _flat(ckpt["kind"], metrics)
    if ckpt["kind"] == "stage2":
        out.update(_target_results(metrics))
    out["checkpoint"] = str(cfg.stage.ckpt)
    return out


def _scalar(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Hydra entry point: one clear error line for bad input; the objective for sweeps."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    if hc.mode == RunMode.MULTIRUN and cfg.trial.params is None:
        # the basic sweeper does not say which values it chose: keep all of the job's overrides
        chosen = [o.split("=", 1) for o in hc.overrides.task if "=" in o and not o.startswith("trial.")]
        with open_dict(cfg):
            cfg.trial.params = {k.lstrip("+~"): _scalar(v) for k, v in chosen}
    try:
        return objective(train(cfg, run_dir))
    except DenetdmError as e:
        if hc.mode == RunMode.MULTIRUN:
            log.error("trial failed: %s", e)  # into this job's own run.log, where sweep.py finds it
            if "optuna" in str(hc.sweeper.get("_target_", "")):
                raise  # our Optuna loop records the trial as failed and applies its failure limit
            return math.nan  # the basic sweeper would stop at the first failed job: go on with the grid
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(
            f"interrupted: finished epochs are saved in {run_dir}; run the same command with "
            f"hydra.run.dir={run_dir} to resume"
        )


if __name__ == "__main__":
    if problem := check_group_choices(sys.argv[1:]) or check_launcher(sys.argv[1:]):
        sys.exit(problem)
    sys.argv[1:] = quote_numeric_choices(sys.argv[1:])
    install_sweeper()
    main()
