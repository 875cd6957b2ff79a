"""`make bench-cluster`: one sweep of trials of uneven length on the test cluster (`make cluster-up`: nodes n1, n2),
in batches and in worker mode, and each mode's wall time and workers' busy fraction. Measures and prints; it never
fails on a timing.

The trials: a seeded grid over the deep expert's depth (an epoch of a 12-layer MLP costs about twice one of a 3-layer
one) and the seed, on the synthetic set. Busy: the sum over runs of the span from its job composing its config
(.hydra/config.yaml) to its results.json, over (workers x the sweep's wall time); the rest is each SLURM job's start
(a Python process, imports), the wait for a batch's slowest trial, and the sweep's own asking and telling.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_DIR = Path(os.environ.get("CLUSTER_DIR", "/tmp/denetdm-cluster"))


def sweep_args(args: argparse.Namespace) -> list[str]:
    """The sweep both modes run: a seeded grid over depth and seed, one CPU a trial."""
    return [
        *("-m", "hydra/sweeper=denetdm_optuna", "hydra/sweeper/sampler=grid", "hydra.sweeper.sampler.seed=0"),
        *("hydra.sweeper.direction=maximize", f"hydra.sweeper.n_trials={len(args.depths) * len(args.seeds)}"),
        *("launcher=slurm", "dataset=synthetic", f"dataset.train_size={args.train_size}", "model.shallow.depth=2"),
        f"model.deep.depth={','.join(map(str, args.depths))}",
        f"seed={','.join(map(str, args.seeds))}",
        *(f"experts.epochs={args.epochs}", f"target.epochs={args.epochs}"),
        *("logger=none", "progress=false", "threads=1"),
    ]


def busy_seconds(sweep: Path) -> list[float]:
    """Each run's span: from its job composing its config to its results.json."""
    spans = []
    for results in sorted(sweep.glob("*/results.json")):
        spans.append(results.stat().st_mtime - (results.parent / ".hydra" / "config.yaml").stat().st_mtime)
    return spans


def run_mode(name: str, extra: list[str], args: argparse.Namespace, env: dict) -> dict:
    """One sweep; its wall time, runs, SLURM jobs and busy fraction."""
    sweep = Path(args.out) / name
    cmd = [sys.executable, str(ROOT / "run.py"), *sweep_args(args), *extra, f"hydra.sweep.dir={sweep}"]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"error: the {name} sweep failed: {proc.stderr.strip().splitlines()[-1:]}")
    spans = busy_seconds(sweep)
    jobs = list((sweep / ".submitit").glob("*/*_log.out"))  # one per SLURM job (an array's task)
    return {"mode": name, "wall_s": wall, "runs": len(spans), "jobs": len(jobs), "busy_s": sum(spans)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="worker jobs, and trials per batch")
    parser.add_argument("--depths", type=int, nargs="+", default=[3, 6, 9, 12])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-size", type=int, default=20000)
    parser.add_argument("--out", default="outputs/bench-cluster")
    parser.add_argument("--record", help="append the rows (with the commit and the command) to this JSON-lines file")
    args = parser.parse_args()
    env_sh = CLUSTER_DIR / "env.sh"
    if not env_sh.exists():
        sys.exit(f"error: no test cluster ({env_sh} is absent): run `make cluster-up` first")
    env = {**os.environ, **dict(re.findall(r"^export (\w+)=(.*)$", env_sh.read_text(), re.M)), "WANDB_MODE": "disabled"}
    n = args.workers
    batches = [f"hydra.sweeper.n_jobs={n}", f"hydra.launcher.array_parallelism={n}"]
    modes = [("batches", batches), ("workers", [f"hydra.sweeper.workers={n}"])]
    rows = [run_mode(name, extra, args, env) for name, extra in modes]
    print(f"{len(args.depths) * len(args.seeds)} trials (deep depth {args.depths} x seeds {args.seeds}), {n} at a time")
    print(f"{'mode':<8} {'wall s':>7} {'runs':>5} {'SLURM jobs':>10} {'busy s':>7} {'busy fraction':>13}")
    for r in rows:
        fraction = r["busy_s"] / (n * r["wall_s"])
        print(f"{r['mode']:<8} {r['wall_s']:7.1f} {r['runs']:5d} {r['jobs']:10d} {r['busy_s']:7.1f} {fraction:13.2f}")
    if args.record:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        with open(args.record, "a") as f:
            for r in rows:
                f.write(json.dumps({**r, "workers": n, "commit": commit, "argv": sys.argv[1:]}) + "\n")


if __name__ == "__main__":
    main()
