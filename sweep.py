"""Compare runs and sweeps: tables, plots, the best trial, and a W&B summary run.

python sweep.py table <dir> [<dir> ...] [--metric test/acc_unbiased] [--selection val[,oracle,...]] [--published]
                      [--where KEY=VALUE ...] [--format md|latex|csv]
python sweep.py plot <sweep dir> [--out <sweep dir>/plots] [--format png|pdf|svg] [--dpi 110]
python sweep.py best <sweep dir>   |   python sweep.py best --storage sqlite:///study.db --study-name NAME
python sweep.py wandb <sweep dir> [--project denetdm]      (offline unless WANDB_MODE says otherwise)
python sweep.py export <run or sweep dir> [...] --to results/<name>    (the committed results store)
python sweep.py report [docs/results.md] [--check]         (regenerate the tables of a doc from the store)
"""

import argparse
import os
import sys
from pathlib import Path

import yaml

from denetdm.errors import DenetdmError
from denetdm.reporting.runs import Collection, collect, finite, objective_key


def cmd_table(args: argparse.Namespace) -> None:
    """Print a DomainBed-style table of the runs below the given directories."""
    from denetdm.reporting.docgen import select
    from denetdm.reporting.tables import FORMATS, add_published, build_table
    from denetdm.selection import protocol

    selections = [protocol(s.strip()).name for s in args.selection.split(",")]
    coll = select(args.dirs, args.where)
    if coll.runs and not any(args.metric in r.results for r in coll.runs):
        known = sorted({k for r in coll.runs for k, v in r.results.items() if finite(v) and k.count("/") >= 1})
        sys.exit(f"error: no run has the metric {args.metric!r}; try one of: {', '.join(known[:12])}, ...")
    table = build_table(coll, args.metric, selections, args.last_epoch)
    if args.published:
        add_published(table)
    if not table.cells:
        found = sorted({r.selection for r in coll.runs} - {None})
        unfinished = [f"{coll.rel(path)}: {why}" for path, why in coll.incomplete[:3]]
        more = f" (+{len(coll.incomplete) - 3} more)" if len(coll.incomplete) > 3 else ""
        sys.exit(
            f"error: no finished run with {args.metric} and selection={args.selection} below "
            f"{', '.join(args.dirs)}"
            + (f"; the runs there have selection={','.join(found)}" if found else "")
            + (f"; not finished: {'; '.join(unfinished)}{more}" if unfinished else "")
        )
    text = FORMATS[args.format](table)
    print(text, end="")
    if args.format == "csv":  # keep stdout machine-readable
        print("\n".join(table.notes), file=sys.stderr)


def cmd_plot(args: argparse.Namespace) -> None:
    """Write the plots of a sweep directory."""
    from denetdm.reporting.plots import plot_all

    out = Path(args.out) if args.out else Path(args.dir) / "plots"
    if args.dpi < 10:
        sys.exit(f"error: --dpi must be at least 10, got {args.dpi}")
    try:
        made = plot_all(collect([args.dir]), Path(args.dir), out, args.format, args.dpi)
    except OSError as e:
        sys.exit(f"error: cannot write the plots into {out} ({e.strerror or e}); give a writable --out folder")
    if not made:
        sys.exit(f"error: nothing to plot: no finished runs below {args.dir}")
    for path in made:
        print(path)


def best_summary(sweep_dir: Path | None, coll: Collection | None, storage: str | None, study: str | None) -> dict:
    """The best trial: from optimization_results.yaml, the study storage, or (basic sweeps) the runs."""
    if storage:
        import optuna

        from denetdm.sweeps.pruning import check_storage, open_storage
        from denetdm.sweeps.sweeper import study_summary

        check_storage(storage, "--storage")
        try:
            summary = study_summary(optuna.load_study(study_name=study, storage=open_storage(storage)))
        except KeyError:
            raise DenetdmError(f"no study {study!r} in {storage}; check --study-name") from None
        if not summary["n_complete"]:
            raise DenetdmError(f"study {study!r} has no completed trial yet")
        return summary
    path = sweep_dir / "optimization_results.yaml"
    if path.exists():
        try:
            out = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError):
            out = None
        if not isinstance(out, dict) or not isinstance(out.get("best_params", {}), dict):
            raise DenetdmError(f"{path} is damaged; give the study instead: --storage URL --study-name NAME")
        if not finite(out.get("best_value")):
            raise DenetdmError(f"{path} records no completed trial (n_failed={out.get('n_failed')})")
        return out
    runs = [r for r in coll.runs if finite(r.objective)]
    if not runs:
        raise DenetdmError(f"no optimization_results.yaml and no finished run below {sweep_dir}")
    b = max(runs, key=lambda r: r.objective)
    params = (b.config.get("trial") or {}).get("params") or {}
    return {"best_run": coll.rel(b.path), "best_value": b.objective, "best_params": params, "n_complete": len(runs)}


def cmd_best(args: argparse.Namespace) -> None:
    """Print the best parameters and value."""
    if not args.dir and not args.storage:
        sys.exit("error: give a sweep directory, or --storage URL --study-name NAME")
    coll = collect([args.dir]) if args.dir else None
    best = best_summary(Path(args.dir) if args.dir else None, coll, args.storage, args.study_name)
    if coll is not None and best.get("best_trial") is not None:
        run = next((r for r in coll.runs if r.trial == best["best_trial"]), None)
        if run is not None:
            best["best_run"] = coll.rel(run.path)
            best["test/acc_unbiased (reported, not used to choose)"] = run.results.get("test/acc_unbiased")
    key = objective_key(coll.runs) if coll else "objective"
    print(f"best value ({key}): {_shown(key, best['best_value'])}")
    for key in ("study_name", "best_trial", "best_run", "n_complete", "n_failed"):
        if best.get(key) is not None:
            print(f"{key}: {best[key]}")
    print("best params:")
    for key, value in (best.get("best_params") or {}).items():
        print(f"  {key}={value}")
    for key, value in best.items():
        if key.startswith("test/") and value is not None:
            print(f"{key}: {_shown(key, value)}")


def _shown(key: str, value: float) -> str:
    """A value as tables show it: accuracies in % (files keep fractions), anything else as recorded."""
    from denetdm.reporting.tables import is_fraction

    return f"{100 * value:.2f} %" if is_fraction(key) else f"{value:.4f}"


def cmd_wandb(args: argparse.Namespace) -> None:
    """Log one summary run (table of trials + plots) into the sweep's W&B group."""
    from denetdm.reporting.loggers import log_sweep_summary
    from denetdm.reporting.plots import plot_all
    from denetdm.reporting.tables import runs_table

    sweep_dir = Path(args.dir)
    coll = collect([sweep_dir])
    if not coll.runs:
        sys.exit(f"error: no finished runs below {sweep_dir}")
    studies = {(r.config.get("trial") or {}).get("study") for r in coll.runs} - {None}
    group = studies.pop() if len(studies) == 1 else sweep_dir.resolve().name
    try:
        best = best_summary(sweep_dir, coll, None, None)
    except DenetdmError:
        best = {}
    plots = plot_all(coll, sweep_dir, sweep_dir / "plots")
    mode = args.mode or os.environ.get("WANDB_MODE", "offline")
    where = log_sweep_summary(sweep_dir, runs_table(coll), plots, best, args.project, group, mode)
    print(f"logged the summary of {len(coll.runs)} runs (group {group!r}, mode {mode}) to {where}")


def cmd_export(args: argparse.Namespace) -> None:
    """Write a record per finished run into the results store."""
    from denetdm.reporting import store

    to = Path(args.to)
    if to.exists() and not to.is_dir():
        raise DenetdmError(f"--to {to} is a file; give a directory for the records, e.g. results/cmnist")
    coll = collect(args.dirs)
    for path, why in coll.incomplete:
        if path in coll.roots:
            raise DenetdmError(f"{path} has no results.json ({why}); only finished runs can be exported")
    runs = [r for r in coll.runs if not r.path.name.endswith(store.SUFFIX)]
    if not runs:
        raise DenetdmError(f"no finished run (results.json) below {', '.join(args.dirs)}")
    to.mkdir(parents=True, exist_ok=True)
    new = sum(store.write(store.record(r.results, r.epochs(), coll.rel(r.path)), to) for r in runs)
    print(f"exported {len(runs)} runs to {to}: {new} new or changed, {len(runs) - new} already there")
    for path, why in coll.incomplete:
        print(f"not exported: {coll.rel(path)}: {why}", file=sys.stderr)


def cmd_report(args: argparse.Namespace) -> None:
    """Regenerate the store's tables in a markdown file (or check that they are current)."""
    from denetdm.reporting.docgen import report

    current = report(Path(args.file), check=args.check)
    if args.check and not current:
        sys.exit(f"error: {args.file} differs from what the results store gives; run: python sweep.py report")
    print(f"{args.file} {'is up to date' if current else 'regenerated'}")


def _table_parser(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("table", help="mean ± std over seeds per method/depth pair and dataset/severity/ratio")
    t.add_argument("dirs", nargs="+", help="run and sweep directories (searched recursively)")
    t.add_argument("--metric", default="test/acc_unbiased", help="a results.json key (default test/acc_unbiased)")
    t.add_argument(
        "--selection",
        default="val",
        help="runs with this selection protocol (val, val_nolabels, "
        "val_biased_nolabels, oracle, last); several, comma-separated, side by side",
    )
    t.add_argument(
        "--published", action="store_true", help="the paper's numbers beside ours (denetdm/reporting/published.yaml)"
    )
    t.add_argument(
        "--where",
        action="append",
        default=[],
        help="only runs with KEY=VALUE (a results or dotted config key; a key given twice: either value)",
    )
    t.add_argument(
        "--last-epoch",
        action="store_true",
        help="each run's metric at its final phase's last epoch (its curve) instead of at the selected epoch",
    )
    t.add_argument("--format", default="md", choices=["md", "latex", "csv"])
    t.set_defaults(func=cmd_table)


def main(argv: list[str] | None = None) -> None:
    """Parse the sub-command and run it; user errors become one line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    _table_parser(sub)
    pl = sub.add_parser("plot", help="heatmaps, optimisation history and stage-1 curves")
    pl.add_argument("dir")
    pl.add_argument("--out", help="output folder (default <dir>/plots)")
    pl.add_argument("--format", default="png", choices=["png", "pdf", "svg"])
    pl.add_argument("--dpi", type=int, default=110, help="resolution of PNGs (default 110)")
    pl.set_defaults(func=cmd_plot)
    b = sub.add_parser("best", help="best parameters and value of a sweep or study")
    b.add_argument("dir", nargs="?")
    b.add_argument("--storage", help="Optuna storage URL, e.g. sqlite:///study.db")
    b.add_argument("--study-name")
    b.set_defaults(func=cmd_best)
    w = sub.add_parser("wandb", help="log a summary run (table + plots) to W&B")
    w.add_argument("dir")
    w.add_argument("--project", default="denetdm")
    w.add_argument("--mode", choices=["online", "offline", "disabled"], help="default: $WANDB_MODE or offline")
    w.set_defaults(func=cmd_wandb)
    e = sub.add_parser("export", help="records of finished runs into the results store (results/<name>)")
    e.add_argument("dirs", nargs="+", help="run and sweep directories (searched recursively)")
    e.add_argument("--to", required=True, help="the store directory, e.g. results/cmnist")
    e.set_defaults(func=cmd_export)
    r = sub.add_parser("report", help="regenerate the tables of docs/results.md from the results store")
    r.add_argument("file", nargs="?", default="docs/results.md")
    r.add_argument("--check", action="store_true", help="only say whether the file is up to date (exit 1 if not)")
    r.set_defaults(func=cmd_report)
    args = p.parse_args(argv)
    try:
        args.func(args)
    except DenetdmError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
