"""Why a deep MLP expert collapses in stage 1: its signal, gradients, dead units and Adam's steps, layer by layer.

    python -m denetdm.analysis.collapse experiment=paper_cmnist collapse.depths=[3,5,7,8]
    python -m denetdm.analysis.collapse experiment=paper_cmnist remedy=kaiming    # the same under a remedy

Hydra overrides as for run.py. For each deep depth (the shallow expert as the preset has it), seed and weight-decay
arm, stage 1 starts from the initial weights and batch order a run of that seed draws and trains for
`collapse.epochs`; at each step of `collapse.at` it measures on a fixed batch of validation images, per Linear layer
of the deep expert: the RMS of its post-ReLU output, the share of that output that depends on the input (variance
across images over the second moment), the share of dead units, the RMS of the loss gradient of its weight, the
weight decay's share of what Adam is fed (|wd w| / |g|, and the share of weights where it outweighs the gradient;
the L2 arm only) and the RMS step Adam took since the last measurement relative to the weight's RMS; and for the
whole expert the gradient that the product of experts passes to its features, its features' size beside the
shallow expert's, its label-free `pred_entropy` and its accuracy on the colour-aligned images. Writes
collapse.json into the run directory (results/collapse_mechanism holds the committed ones).
"""

import logging
import sys
from pathlib import Path

import hydra
import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from denetdm.checks import instantiate_checked, positive_int
from denetdm.errors import ConfigError, DenetdmError
from denetdm.files.jsonlines import write_json
from denetdm.metrics import group_metrics
from denetdm.models.experts import TwoExpertModel, build_backbone
from denetdm.provenance import commit, machine
from denetdm.seeding import derive_seed, generator

log = logging.getLogger("denetdm.collapse")
ARMS = {"l2": torch.optim.Adam, "decoupled": torch.optim.AdamW, "none": torch.optim.Adam}


def _check(cfg: DictConfig) -> None:
    """Every collapse.* value (one error line, before data loads)."""
    c = cfg.collapse
    ints = list(c.depths) + list(c.at)
    if not c.depths or not c.at or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in ints):
        raise ConfigError(f"collapse.depths and collapse.at must be non-empty lists of integers >= 0, got {c!r}")
    if min(c.depths) < 2:
        raise ConfigError(f"collapse.depths must be at least 2 (one hidden layer), got {list(c.depths)}")
    if not c.arms or any(a not in ARMS for a in c.arms):
        raise ConfigError(f"collapse.arms must be a non-empty list of {list(ARMS)}, got {list(c.arms or [])}")
    positive_int("collapse.seeds", c.seeds)
    positive_int("collapse.probe_size", c.probe_size)


def _stage1(cfg: DictConfig, data, depth: int, seed: int, arm: str):
    """Stage 1's model as a run of `seed` builds it (same initial weights), with the arm's optimiser."""
    spec = {**OmegaConf.to_container(cfg.model.deep, resolve=True), "depth": depth}
    shallow = OmegaConf.to_container(cfg.model.shallow, resolve=True)
    torch.manual_seed(derive_seed(seed, "stage1-init"))  # as the pipeline seeds stage 1's initial weights
    deep, shallow = (build_backbone(s, data.input_shape) for s in (spec, shallow))
    model = TwoExpertModel(deep, shallow, data.num_classes)
    wd = 0.0 if arm == "none" else float(cfg.experts.weight_decay)
    return model, ARMS[arm](model.parameters(), lr=float(cfg.experts.lr), weight_decay=wd)


def _layers(model: TwoExpertModel) -> list[nn.Linear]:
    return [m for m in model.deep.modules() if isinstance(m, nn.Linear)]


def _outputs(model: TwoExpertModel, x: torch.Tensor) -> list[torch.Tensor]:
    """The deep expert's output after each Linear's ReLU."""
    outs, h = [], x
    for m in model.deep:
        h = m(h)
        if isinstance(m, nn.ReLU):
            outs.append(h)
    return outs


def _measure(model, opt, x, y, b, before: list[torch.Tensor], steps: int, cells: tuple[int, int]) -> dict:
    """One measurement of every layer and of the whole deep expert, on the probe batch."""
    model.eval()
    layers = _layers(model)
    l2 = opt.defaults["weight_decay"] if type(opt) is torch.optim.Adam else 0.0  # AdamW decays outside Adam
    fd, fs = model.features(x)
    fd.retain_grad()
    F.cross_entropy(model.head(fd + fs), y).backward()
    rows = []
    for i, (lin, h) in enumerate(zip(layers, _outputs(model, x))):
        g, w = lin.weight.grad, lin.weight.detach()
        step = (w - before[i]).pow(2).mean().sqrt() / max(steps, 1)
        rows.append(
            {
                "layer": i + 1,
                "act_rms": h.pow(2).mean().sqrt().item(),
                "input_share": (h.var(0).sum() / h.pow(2).mean(0).sum().clamp_min(1e-30)).item(),
                "dead": (h.amax(0) <= 0).float().mean().item(),
                "grad_rms": g.pow(2).mean().sqrt().item(),
                # L2 arm: the share of weights whose decay term outweighs their gradient in what Adam is fed; Adam
                # normalises per weight, so these move toward zero by about lr a step whatever their size
                "decay_dominated": (l2 * w.abs() > g.abs()).float().mean().item(),
                "decay_share": (l2 * w.norm() / g.norm().clamp_min(1e-30)).item(),
                "step_rel": (step / w.pow(2).mean().sqrt()).item(),
                "weight_rms": w.pow(2).mean().sqrt().item(),
            }
        )
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        deep = group_metrics(model.head(fd).argmax(1), y, b, *cells)
    return {
        "layers": rows,
        "poe_grad_rms": fd.grad.pow(2).mean().sqrt().item(),
        "deep_feature_rms": fd.detach().pow(2).mean().sqrt().item(),
        "shallow_feature_rms": fs.detach().pow(2).mean().sqrt().item(),
        "deep_pred_entropy": deep["pred_entropy"],
        "deep_acc_aligned": deep["acc_aligned"],
    }


def trace(cfg: DictConfig, data, depth: int, seed: int, arm: str) -> list[dict]:
    """Stage 1 of one (depth, seed, arm) for collapse.epochs, measured at each step of collapse.at."""
    model, opt = _stage1(cfg, data, depth, seed, arm)
    probe = data.val
    x, y, b = (t[: cfg.collapse.probe_size] for t in (probe.x, probe.y, probe.b))
    gen, at, step, last = generator(seed, "stage1-batches"), set(cfg.collapse.at), 0, 0
    weights = [lin.weight.detach().clone() for lin in _layers(model)]
    out = []
    for _ in range(cfg.collapse.epochs):
        for xb, yb, _ in data.train.batches(cfg.experts.batch_size, gen, drop_last=True):
            if step in at:
                cells = (data.num_classes, data.num_biases)
                out.append({"step": step, **_measure(model, opt, x, y, b, weights, step - last, cells)})
                weights, last = [lin.weight.detach().clone() for lin in _layers(model)], step
            model.train()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            step += 1
    return out


def run(cfg: DictConfig) -> dict:
    """Every (depth, seed, arm): its trace."""
    _check(cfg)
    torch.set_num_threads(int(cfg.threads or 2))
    data = instantiate_checked(cfg.dataset).load().to(torch.device("cpu"), channels_last=False)
    runs = []
    for depth in cfg.collapse.depths:
        for seed in range(int(cfg.seed), int(cfg.seed) + int(cfg.collapse.seeds)):
            for arm in cfg.collapse.arms:
                rows = trace(cfg, data, depth, seed, arm)
                runs.append({"depth": depth, "seed": seed, "arm": arm, "trace": rows})
                end = rows[-1]
                log.info(
                    "depth %d seed %d %s: step %d, deep aligned %.3f, entropy %.3f",
                    *(depth, seed, arm, end["step"], end["deep_acc_aligned"], end["deep_pred_entropy"]),
                )
    model = OmegaConf.to_container(cfg.model, resolve=True)
    where = {"commit": commit(), "machine": machine(torch.device("cpu"))}
    out = {"dataset": data.name, "model": model, "experts": OmegaConf.to_container(cfg.experts), "provenance": where}
    return out | {"collapse": OmegaConf.to_container(cfg.collapse), "runs": _rounded(runs)}


def _rounded(tree):
    """Measurements to 4 significant digits (the file is committed as evidence, docs/results.md reads it)."""
    if isinstance(tree, dict):
        return {k: _rounded(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_rounded(v) for v in tree]
    return float(f"{tree:.4g}") if isinstance(tree, float) else tree


@hydra.main(version_base="1.3", config_path="../../conf", config_name="collapse")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: one error line for bad input."""
    from hydra.core.hydra_config import HydraConfig

    try:
        result = run(cfg)
    except DenetdmError as e:
        sys.exit(f"error: {e}")
    path = Path(HydraConfig.get().runtime.output_dir) / "collapse.json"
    write_json(path, result)
    print(f"wrote {path}")


if __name__ == "__main__":
    from denetdm.cli import check_group_choices, quote_numeric_choices

    if problem := check_group_choices(sys.argv[1:]):
        sys.exit(problem)
    sys.argv[1:] = quote_numeric_choices(sys.argv[1:])
    main()
