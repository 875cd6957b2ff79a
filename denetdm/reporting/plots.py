"""Plots of a sweep (PNG, PDF or SVG): shallow x deep heatmaps, the optimisation history, stage-1 curves,
linear-probe decodability per epoch, and Optuna's own plots of a sweep's study."""

import statistics
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from denetdm.reporting.runs import Collection, Run, finite, objective_key, trial_records  # noqa: E402
from denetdm.reporting.tables import is_fraction  # noqa: E402
from denetdm.sweeps.search import depth_grid  # noqa: E402


def _grid(config: dict, which: str) -> range:
    node = (config.get("search") or {}).get(which)
    if not isinstance(node, dict) or not {"low", "high"} <= set(node):
        return range(0)  # a run made outside depth_gap
    return depth_grid(node, which)


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)  # the format follows the file's suffix, the resolution plot_all's rc_context
    plt.close(fig)
    return path


def _pair_grid(runs: list, key: str, shallows: list, deeps: list) -> tuple[np.ndarray, np.ndarray]:
    """Mean of `key` (%) and the number of runs per (shallow, deep) pair; NaN where none ran."""
    grid = np.full((len(shallows), len(deeps)), np.nan)
    counts = np.zeros_like(grid, dtype=int)
    for i, s in enumerate(shallows):
        for j, d in enumerate(deeps):
            vals = [100 * r.results[key] for r in runs if r.pair == (s, d) and finite(r.results.get(key))]
            if vals:
                grid[i, j], counts[i, j] = statistics.fmean(vals), len(vals)
    return grid, counts


def _annotate(ax, grid: np.ndarray, counts: np.ndarray, shallows: list, deeps: list) -> None:
    """White over illegal pairs, hatching over equal-depth controls, each run cell's mean and n."""
    for i, s in enumerate(shallows):
        for j, d in enumerate(deeps):
            if d < s or (d == s and not counts[i, j]):  # not a legal pair (equal: only a control run)
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, color="white"))
            elif counts[i, j]:
                if d == s:  # the control without a depth gap (search.allow_equal): hatched, marked "="
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", lw=0))
                text = ("= " if d == s else "") + f"{grid[i, j]:.1f}\n(n={counts[i, j]})"
                color = "white" if grid[i, j] < np.nanmean(grid) else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)


def heatmap(coll: Collection, path: Path) -> Path | None:
    """Mean of the objective and of conflicting accuracy per (shallow, deep) depth pair; None without runs."""
    runs = [r for r in coll.runs if not r.is_eval and len(r.depths) == 2]  # DeNetDM's depth pairs, no baselines
    if not runs:
        return None
    # the whole search grid (search.shallow / search.deep of the runs' configs): what was not reached shows grey
    shallows = sorted({r.pair[0] for r in runs} | {d for r in runs for d in _grid(r.config, "shallow")})
    deeps = sorted({r.pair[1] for r in runs} | {d for r in runs for d in _grid(r.config, "deep")})
    key, model = objective_key(runs), final_model(runs)
    panels = ((key, f"objective, {model}: {key} (%)"), ("val/acc_conflicting", f"{model}: val/acc_conflicting (%)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 0.55 * len(shallows) + 2.4))
    for ax, (key, title) in zip(np.atleast_1d(axes), panels):
        if not any(finite(r.results.get(key)) for r in runs):  # runs that stop before the final phase
            head = selected_head(runs[0])
            key, title = f"{head}/{key}", f"{head}: {head}/{key} (%)"
        grid, counts = _pair_grid(runs, key, shallows, deeps)
        cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")  # grey: not run
        im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, origin="lower", aspect="auto")
        _annotate(ax, grid, counts, shallows, deeps)
        ax.set_xticks(range(len(deeps)), deeps)
        ax.set_yticks(range(len(shallows)), shallows)
        ax.set(xlabel="deep depth", ylabel="shallow depth")
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax)
    legend = "mean over runs per depth pair (grey: not run; white: deep <= shallow; hatched '=': equal-depth control)"
    fig.suptitle(legend, fontsize=9)
    return _save(fig, path)


def selected_head(run: Run) -> str:
    """`<phase>/<head>` of the head that selection follows in the run's last phase (its schedule's `select`), e.g.
    `stage1/shallow` for a run stopped after DeNetDM's stage 1."""
    phase = (run.results.get("stages") or [""])[-1]
    node = ((run.config.get("method") or {}).get("phases") or {}).get(phase) or {}
    select = str((run.config.get(node.get("schedule")) or {}).get("select", "target/"))
    return f"{phase}/{select.split('/')[0]}"


def final_model(runs: list[Run]) -> str:
    """The model whose numbers `<split>/<metric>` are (conf/method/: `final`), e.g. `stage2 target`."""
    finals = {f"{f.get('phase')} {f.get('head')}" for r in runs if (f := (r.config.get("method") or {}).get("final"))}
    return finals.pop() if len(finals) == 1 else "final model"


def _history_points(coll: Collection, sweep_dir: Path) -> list[tuple[str, int, float, str, bool]]:
    """(group, trial or job number, objective, state, reused): an Optuna sweep's trials (one group), else the runs in
    job order, a group per method (a seeds x methods grid compares methods, not trials)."""
    records = trial_records(sweep_dir)
    if records:
        return [("trials", r["number"], r["value"], r["state"], "repeat_of" in r) for r in records]
    return [
        (r.method, i if r.trial is None else r.trial, r.objective, "COMPLETE", False) for i, r in enumerate(coll.runs)
    ]


def history(coll: Collection, sweep_dir: Path, path: Path) -> Path | None:
    """Objective per trial in order, the best so far (per method where runs of several share the sweep), and
    failed trials; None without trials."""
    points = _history_points(coll, sweep_dir)
    done = [(g, n, 100 * v, rep) for g, n, v, state, rep in points if state == "COMPLETE" and finite(v)]
    if not done:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    groups = sorted({g for g, *_ in done})
    for i, g in enumerate(groups):
        mine, name = [(n, v, rep) for g2, n, v, rep in done if g2 == g], "" if len(groups) == 1 else f"{g}: "
        ax.scatter(*zip(*[(n, v) for n, v, rep in mine if not rep]), color=f"C{i}", label=f"{name}trial", zorder=3)
        if reused := [(n, v) for n, v, rep in mine if rep]:
            ax.scatter(*zip(*reused), facecolors="none", edgecolors=f"C{i}", label="repeat (value reused)", zorder=3)
        order = sorted(mine)
        best = np.maximum.accumulate([v for _, v, _ in order])
        ax.step([n for n, _, _ in order], best, where="post", color=f"C{i}", alpha=0.6, label=f"{name}best so far")
    if failed := [n for _, n, _, state, _ in points if state != "COMPLETE"]:
        lo = min(v for *_, v, _ in done)
        ax.scatter(failed, [lo] * len(failed), marker="x", color="red", label="failed", zorder=3)
    ax.set_xlabel("trial" if groups == ["trials"] else "job")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"objective, {final_model(coll.runs)}: {objective_key(coll.runs)} (%)")
    ax.set_title("optimisation history")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def stage1_curves(coll: Collection, path: Path, metric: str = "acc_conflicting") -> Path | None:
    """Validation `metric` of the shallow and the deep expert per stage-1 epoch, a line per run."""
    runs = [(r, [e for e in r.epochs() if e.get("stage") == "stage1"]) for r in coll.runs]
    runs = [(r, eps) for r, eps in runs if eps]
    if not runs:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    # a colour per depth pair; per seed where all runs share one pair (the spread over seeds)
    one_pair = len({r.pair for r, _ in runs}) == 1

    def group(run: Run) -> tuple:
        return (run.results.get("seed"),) if one_pair else run.pair

    groups = sorted({group(r) for r, _ in runs}, key=str)
    colours = {g: plt.get_cmap("tab10")(i % 10) for i, g in enumerate(groups)}
    for ax, head in zip(axes, ("shallow", "deep")):
        labelled = set()
        for run, eps in runs:
            key = f"stage1/{head}/val/{metric}"
            xs = [e["epoch"] for e in eps if finite(e.get(key))]
            ys = [100 * e[key] for e in eps if finite(e.get(key))]
            g = group(run)
            label = None if g in labelled else f"seed {g[0]}" if one_pair else f"shallow {g[0]}, deep {g[1]}"
            labelled.add(g)
            ax.plot(xs, ys, color=colours[g], alpha=0.8, marker="o", ms=3, label=label)
        ax.set_title(f"stage 1: {head} expert")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"val {metric.removeprefix('acc_')} acc. (%)")
    axes[1].legend(fontsize=7, ncol=2)
    return _save(fig, path)


def separation_plot(coll: Collection, path: Path) -> Path | None:
    """Stage-1 separation (shallow minus deep validation conflicting accuracy) against the depth gap, a point per
    run, equal-depth controls marked; None without such runs."""
    pts = [
        (r.pair[1] - r.pair[0], 100 * r.results["stage1/separation"])
        for r in coll.runs
        if len(r.depths) == 2 and finite(r.results.get("stage1/separation"))
    ]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    gaps = sorted({g for g, _ in pts})
    means = [statistics.fmean(v for g2, v in pts if g2 == g) for g in gaps]
    ax.plot(gaps, means, "-", color="grey", alpha=0.6, label="mean per gap")
    ax.scatter([g for g, _ in pts if g != 0], [v for g, v in pts if g != 0], s=18, label="runs")
    if any(g == 0 for g, _ in pts):
        ax.scatter(
            [0 for g, _ in pts if g == 0],
            [v for g, v in pts if g == 0],
            s=40,
            marker="x",
            color="red",
            label="equal depth (control)",
        )
    ax.axhline(0, color="black", lw=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # depth gaps are whole layers
    ax.set_xlabel("depth gap (deep - shallow)")
    ax.set_ylabel("stage-1 separation: shallow - deep\nval conflicting acc. (points)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _probe_series(runs: list, stage: str, head: str, attr: str) -> tuple[list[int], np.ndarray] | None:
    """Epochs and (runs x epochs) probe accuracies (%) of one head and attribute, over the epochs all runs share."""
    key = f"{stage}/{head}/probe/{attr}"
    per_run = [
        {e["epoch"]: 100 * e[key] for e in r.epochs() if e.get("stage") == stage and finite(e.get(key))} for r in runs
    ]
    epochs = sorted(set.intersection(*(set(d) for d in per_run))) if per_run else []
    return (epochs, np.array([[d[e] for e in epochs] for d in per_run])) if epochs else None


def probe_curves(coll: Collection, path: Path, stage: str = "stage1") -> Path | None:
    """Linear decodability of the class (core) and the bias from each expert's features per epoch
    (`probe.every`): the mean over runs of one depth pair, with a band from the lowest to the highest run."""
    # the heads the records probed, in the order the method predicts them
    keys = [k for r in coll.runs for e in r.epochs() if e.get("stage") == stage for k in e]
    heads = tuple(dict.fromkeys(k.split("/")[1] for k in keys if k.count("/") == 3 and "/probe/" in k))
    if not heads:
        return None
    by_pair: dict[tuple[int, int], list] = {}
    for r in coll.runs:
        if _probe_series([r], stage, heads[0], "y"):
            by_pair.setdefault(r.pair, []).append(r)
    if not by_pair:
        return None
    fig, axes = plt.subplots(1, len(heads), figsize=(5.5 * len(heads), 4), sharey=True, squeeze=False)
    for ax, head in zip(axes[0], heads):
        for i, (pair, runs) in enumerate(sorted(by_pair.items())):
            for attr, style, name in (("y", "-o", "core (class)"), ("b", "--s", "bias")):
                series = _probe_series(runs, stage, head, attr)
                if series is None:
                    continue
                xs, ys = series
                colour = plt.get_cmap("tab10")(i % 10)
                label = f"{name}, shallow {pair[0]} / deep {pair[1]} (n={len(runs)})"
                ax.plot(xs, ys.mean(0), style, color=colour, ms=3, label=label)
                if len(runs) > 1:
                    ax.fill_between(xs, ys.min(0), ys.max(0), color=colour, alpha=0.15)
        ax.set_title(f"{stage}: {head}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("linear probe accuracy, held out (%)")
    axes[0][-1].legend(fontsize=7, handlelength=3.5)
    return _save(fig, path)


def _depth_measures(coll: Collection) -> dict[tuple[str, str], dict[int, list[float]]]:
    """{(measure, init|trained): {depth: [one value per run]}} from the probe records of runs told apart by one
    depth: the untrained networks (epoch 0, `probe.at_init`) and the last probed epoch."""
    out: dict = {}
    for r in coll.runs:
        rows = [e for e in r.epochs() if any("/probe/" in k for k in e)]
        heads = {k.split("/")[1] for e in rows for k in e if "/probe/" in k}
        if len(r.depths) != 1 or len(heads) != 1 or len(rows) < 2 or rows[0].get("epoch") != 0:
            continue
        for when, e in (("init", rows[0]), ("trained", rows[-1])):
            for k, v in e.items():
                if "/probe/" in k and finite(v):
                    out.setdefault((k.rsplit("/", 1)[1], when), {}).setdefault(r.depths[0], []).append(v)
    return out


def depth_probes(coll: Collection, path: Path) -> Path | None:
    """Decodability, the features' effective rank and the attribute means' ranks against depth, untrained and
    trained (mean, +-1 std band over the runs of each depth): `hparams_search=depth_probes`."""
    data = _depth_measures(coll)
    if len({d for v in data.values() for d in v}) < 2:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = (
        (axes[0], (("y", "core (class)"), ("b", "bias")), "linear probe accuracy, held out (%)", 100),
        (axes[1], (("rank", "features"),), "effective rank of the features", 1),
        (axes[2], (("rank_y", "class means"), ("rank_b", "bias-value means")), "effective rank of the means", 1),
    )
    for ax, measures, ylabel, scale in panels:
        for when, style in (("init", "--s"), ("trained", "-o")):
            for i, (m, name) in enumerate(measures):
                by_depth = data.get((m, when), {})
                xs = sorted(by_depth)
                mean = np.array([scale * statistics.fmean(by_depth[d]) for d in xs])
                std = np.array([scale * (statistics.stdev(by_depth[d]) if len(by_depth[d]) > 1 else 0) for d in xs])
                colour = plt.get_cmap("tab10")(i)
                ax.plot(xs, mean, style, ms=3, color=colour, label=f"{name}, {when}")
                ax.fill_between(xs, mean - std, mean + std, color=colour, alpha=0.12)
        ax.set(xlabel="depth", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, handlelength=3.5)
    fig.suptitle("by depth: untrained (epoch 0) and after training (the last probed epoch)", fontsize=10)
    return _save(fig, path)


def plot_all(coll: Collection, sweep_dir: Path, out_dir: Path, fmt: str = "png", dpi: int = 110) -> list[Path]:
    """Write every plot that the runs have data for, as `fmt` (png, pdf, svg) at `dpi`; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with plt.rc_context({"savefig.dpi": dpi}):
        made = [
            heatmap(coll, out_dir / f"depth_heatmap.{fmt}"),
            history(coll, sweep_dir, out_dir / f"history.{fmt}"),
            stage1_curves(coll, out_dir / f"stage1_curves.{fmt}"),
            probe_curves(coll, out_dir / f"probes_stage1.{fmt}"),
            depth_probes(coll, out_dir / f"depth_probes.{fmt}"),
            separation_plot(coll, out_dir / f"separation.{fmt}"),
            *study_plots(sweep_dir, out_dir, fmt, objective_key(coll.runs)),
        ]
    return [p for p in made if p is not None]


def plotted(trials: list, scale: float):
    """The completed trials in an in-memory study made for Optuna's plots: values scaled (fractions to %), every
    parameter under one distribution over all trials (a depth whose range follows another's, as depth_gap samples
    it, would be left out of the importances), integers as categories (whole layers on their axis, not a line)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    names = sorted({n for t in trials for n in t.params})
    dists = {}
    for n in names:
        kinds = [t.distributions[n] for t in trials if n in t.distributions]
        values = sorted({t.params[n] for t in trials if n in t.params}, key=str)
        if all(isinstance(d, IntDistribution) for d in kinds):
            dists[n] = CategoricalDistribution(sorted(values))
        elif all(isinstance(d, FloatDistribution) for d in kinds):
            log = all(d.log for d in kinds)
            dists[n] = FloatDistribution(min(d.low for d in kinds), max(d.high for d in kinds), log=log)
        else:  # categories: the search's own choices, in its order
            dists[n] = CategoricalDistribution(list(dict.fromkeys([c for d in kinds for c in d.choices] + values)))
    study = optuna.create_study(direction="maximize")
    for t in trials:
        used = {n: dists[n] for n in t.params}
        study.add_trial(optuna.trial.create_trial(params=t.params, distributions=used, value=scale * t.value))
    return study


def study_plots(sweep_dir: Path, out_dir: Path, fmt: str, target: str = "objective") -> list[Path]:
    """Optuna's plots of the study a sweep keeps in its directory (study.db or study.journal), once two trials
    completed: parameter importances and parallel coordinates, in % for accuracies (the depth pair's own plot is
    depth_heatmap: a contour would interpolate between whole layers). A study in another storage is not read."""
    found = [p for p in (sweep_dir / "study.db", sweep_dir / "study.journal") if p.is_file()]
    if not found:
        return []
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.visualization import matplotlib as ovm

    from denetdm.sweeps.pruning import open_storage

    url = f"sqlite:///{found[0].resolve()}" if found[0].suffix == ".db" else f"journal:{found[0].resolve()}"
    storage, made = open_storage(url), []
    names = optuna.get_all_study_names(storage=storage)
    label = f"{target} (%)" if is_fraction(target) else target
    for name in names:
        done = optuna.load_study(study_name=name, storage=storage).get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
        )
        if len(done) < 2 or not done[0].params:
            continue
        study = plotted(done, 100 if is_fraction(target) else 1)
        draws = {  # PED-ANOVA, as optuna-dashboard does: fANOVA, Optuna's default, needs scikit-learn
            "importances": lambda st: ovm.plot_param_importances(
                st, evaluator=PedAnovaImportanceEvaluator(), target_name=label
            ),
            "parallel_coordinates": lambda st: ovm.plot_parallel_coordinate(st, target_name=label),
        }
        prefix = f"{name}_" if len(names) > 1 else ""  # a shared storage may hold several studies
        for what, draw in draws.items():
            with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
                warnings.simplefilter("ignore")
                ax = draw(study)
            fig = (ax.flat[0] if isinstance(ax, np.ndarray) else ax).figure
            made.append(_save(fig, out_dir / f"study_{prefix}{what}.{fmt}"))
    return made
