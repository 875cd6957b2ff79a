"""Decodability and rank against depth, at initialisation and after a short ERM training (docs/protocols.md §9).

    python -m denetdm.analysis.depth dataset=cmnist backbone_depth=mlp analysis.depths=[1,2,3,4,5,6,7,8]

Hydra overrides as for run.py; writes depth.json and depth.png into the run directory (`hydra.run.dir`) and
logs them to the configured logger. For each depth and seed, a network of the preset's family is measured on
the evaluation split: linear-probe accuracy of the class (core) and of the bias, the effective rank of its
features, and the effective rank of each attribute's class means.
"""

import logging
import statistics
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from denetdm.analysis.probes import class_mean_rank, effective_rank, probe_accuracy, split_features
from denetdm.checks import instantiate_checked, number, positive_int
from denetdm.errors import ConfigError, DenetdmError
from denetdm.files.jsonlines import write_json
from denetdm.methods.erm import ERM
from denetdm.models.experts import Classifier, build_backbone
from denetdm.seeding import derive_seed
from denetdm.sweeps.search import depth_grid

log = logging.getLogger("denetdm.depth")
MEASURES = ("probe_y", "probe_b", "rank", "rank_y", "rank_b")


def _checked_depths(cfg: DictConfig) -> list[int]:
    """The depths to measure, after checking every analysis.* value (one error line, before data loads)."""
    a = cfg.analysis
    if a.split not in ("val", "test"):
        raise ConfigError(f"analysis.split must be val or test, got {a.split!r}")
    if a.family not in ("deep", "shallow", "target"):
        raise ConfigError(f"analysis.family must be deep, shallow or target, got {a.family!r}")
    depths = (
        list(a.depths)
        if a.depths is not None
        else list(depth_grid(cfg.search["deep" if a.family == "target" else a.family], a.family))
    )
    if not depths or not all(isinstance(d, int) and not isinstance(d, bool) for d in depths):
        raise ConfigError(f"analysis.depths must be a non-empty list of integers, got {a.depths!r}")
    positive_int("analysis.seeds", a.seeds)
    if not isinstance(a.epochs, int) or isinstance(a.epochs, bool) or a.epochs < 0:
        raise ConfigError(f"analysis.epochs must be an integer >= 0, got {a.epochs!r}")
    positive_int("analysis.batch_size", a.batch_size)
    positive_int("analysis.steps", a.steps)
    number("analysis.lr", a.lr, strict=True)
    return depths


def _measure(method: ERM, data, split: str, seed: int, steps: int) -> dict[str, float]:
    s = data.splits()[split]
    feats = split_features(method, s)["target"]
    return {
        "probe_y": probe_accuracy(feats, s.y, data.num_classes, seed=seed, steps=steps),
        "probe_b": probe_accuracy(feats, s.b, data.num_biases, seed=seed, steps=steps),
        "rank": effective_rank(feats),
        "rank_y": class_mean_rank(feats, s.y, data.num_classes),
        "rank_b": class_mean_rank(feats, s.b, data.num_biases),
    }


def _network(cfg: DictConfig, data, depth: int, seed: int) -> ERM:
    spec = {**OmegaConf.to_container(cfg.model[cfg.analysis.family], resolve=True), "depth": depth}
    spec.pop("pretrained", None)  # the analysis is about depth: always from scratch
    torch.manual_seed(derive_seed(seed, f"depth-analysis-{depth}"))
    model = Classifier(build_backbone(spec, data.input_shape), data.num_classes)
    return ERM(model, torch.optim.Adam(model.parameters(), lr=cfg.analysis.lr))


def _train(method: ERM, data, cfg: DictConfig, seed: int) -> None:
    gen = torch.Generator().manual_seed(derive_seed(seed, "depth-analysis-batches"))
    method.train()
    for _ in range(cfg.analysis.epochs):
        for x, y, idx in data.train.batches(cfg.analysis.batch_size, gen):
            method.update(x, y, idx)


def run_analysis(cfg: DictConfig) -> dict:
    """Every (depth, seed): the measures at initialisation and after training; with means and stds."""
    depths = _checked_depths(cfg)
    torch.set_num_threads(int(cfg.threads or 2))
    data = instantiate_checked(cfg.dataset).load().to(torch.device("cpu"), channels_last=False)  # normalised
    rows = []
    for depth in depths:
        for seed in range(int(cfg.seed), int(cfg.seed) + int(cfg.analysis.seeds)):
            method = _network(cfg, data, depth, seed)
            rows.append(
                {
                    "depth": depth,
                    "seed": seed,
                    "phase": "init",
                    **_measure(method, data, cfg.analysis.split, seed, cfg.analysis.steps),
                }
            )
            _train(method, data, cfg, seed)
            rows.append(
                {
                    "depth": depth,
                    "seed": seed,
                    "phase": "trained",
                    **_measure(method, data, cfg.analysis.split, seed, cfg.analysis.steps),
                }
            )
            log.info(
                "depth %d seed %d: %s", depth, seed, {k: round(v, 3) for k, v in rows[-1].items() if k in MEASURES}
            )
    return {
        "dataset": data.name,
        "family": cfg.model[cfg.analysis.family].name,
        "depths": depths,
        "analysis": OmegaConf.to_container(cfg.analysis, resolve=True),
        "rows": rows,
        "summary": summarise(rows),
    }


def summarise(rows: list[dict]) -> dict:
    """{phase: {measure: {depth: [mean, std, n]}}} over seeds."""
    out: dict = {}
    for phase in ("init", "trained"):
        for m in MEASURES:
            for d in sorted({r["depth"] for r in rows}):
                vals = [r[m] for r in rows if r["phase"] == phase and r["depth"] == d]
                std = statistics.stdev(vals) if len(vals) > 1 else 0.0
                out.setdefault(phase, {}).setdefault(m, {})[str(d)] = [statistics.fmean(vals), std, len(vals)]
    return out


def plot(result: dict, path: Path) -> Path:
    """Decodability, the features' effective rank and the class-mean ranks against depth (mean, +-1 std band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    means = (("rank_y", "class means"), ("rank_b", "bias-value means"))
    panels = (
        (axes[0], (("probe_y", "core (class)"), ("probe_b", "bias")), "linear probe accuracy (%)", 100),
        (axes[1], (("rank", "features"),), "effective rank of the features", 1),
        (axes[2], means, "effective rank of an attribute's means", 1),
    )
    for ax, measures, ylabel, scale in panels:
        for phase, style in (("init", "--s"), ("trained", "-o")):
            for i, (m, name) in enumerate(measures):
                s = result["summary"][phase][m]
                xs = [int(d) for d in s]
                mean, std = ([scale * v[k] for v in s.values()] for k in (0, 1))
                colour = plt.get_cmap("tab10")(i)
                ax.plot(xs, mean, style, ms=3, color=colour, label=f"{name}, {phase}")
                low, high = [a - b for a, b in zip(mean, std)], [a + b for a, b in zip(mean, std)]
                ax.fill_between(xs, low, high, color=colour, alpha=0.12)
        ax.set_xlabel(f"depth ({result['family']})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, handlelength=3.5)
    n = result["analysis"]["seeds"]
    fig.suptitle(
        f"{result['dataset']}: {result['family']} by depth, at init and after "
        f"{result['analysis']['epochs']} ERM epochs (mean +- std over {n} seeds)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def analyse(cfg: DictConfig, run_dir: Path) -> dict:
    """Run the analysis, write depth.json and depth.png into `run_dir`, log both."""
    result = run_analysis(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "depth.json", result)
    png = plot(result, run_dir / "depth.png")
    logger = instantiate_checked(cfg.logger, _partial_=True, _convert_="all")(
        run_dir=str(run_dir), run_config=OmegaConf.to_container(cfg, resolve=True)
    )
    with logger:
        logger.summary(
            {
                f"depth/{phase}/{m}/{d}": v[0]
                for phase, ms in result["summary"].items()
                for m, ds in ms.items()
                for d, v in ds.items()
            }
        )
        logger.image("depth", png)
    print(f"wrote {run_dir / 'depth.json'} and {png}")
    return result


@hydra.main(version_base="1.3", config_path="../../conf", config_name="depth")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: one error line for bad input."""
    from hydra.core.hydra_config import HydraConfig

    try:
        analyse(cfg, Path(HydraConfig.get().runtime.output_dir))
    except DenetdmError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    from denetdm.cli import check_group_choices, quote_numeric_choices

    if problem := check_group_choices(sys.argv[1:]):
        sys.exit(problem)
    sys.argv[1:] = quote_numeric_choices(sys.argv[1:])
    main()
