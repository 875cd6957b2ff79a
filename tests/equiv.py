"""`make equiv BASE=<commit>`: the same runs made by this checkout and by BASE, compared file by file.

A refactor must not change a number. Each case runs here and in a git worktree of BASE (same interpreter, same
machine, one thread: bit for bit comparable): every method on synthetic data, Colored MNIST for a few epochs (where
$DENETDM_DATA holds MNIST), a stack of two seeds, and a run resumed from a finished stage 1. Compared: results.json
and metrics.jsonl (times, provenance and paths aside) and every tensor of every checkpoint. Prints each case's
verdict; exits 1 when any differs.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from denetdm.fingerprint import fingerprint

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    *("dataset=synthetic", "dataset.train_size=1200", "dataset.test_size=400", "dataset.val_size=200"),
    *("experts.epochs=2", "target.epochs=2", "logger=none", "device=cpu", "progress=false", "threads=1"),
]
METHODS = sorted(p.stem for p in (ROOT / "conf" / "method").glob("*.yaml"))
# keys that differ between two equal runs: wall-clock times (a checkpoint's digest covers its own), which commit made
# a run, where an evaluated checkpoint lay; a checkpoint's `meta` is its config, compared in results.json
VOLATILE = ("time/", "provenance", "checkpoint", "elapsed_s", "digest", "meta")


def cases() -> dict[str, list[list[str]]]:
    """Each case: the command lines run in order in one run directory (a resumed run has two)."""
    out = {f"method={m}": [[*TINY, f"method={m}", "target.epochs=3"]] for m in METHODS}
    out["resume: stage1, then full"] = [[*TINY, "stage=stage1"], [*TINY]]
    out["stack of two seeds"] = [["-m", *TINY, "seed=0,1", "launcher=stacked"]]
    mnist = Path(os.environ.get("DENETDM_DATA", "data")) / "MNIST" / "raw" / "train-images-idx3-ubyte"
    if mnist.exists():
        cmnist = ["experiment=paper_cmnist", "dataset.subset=5000", "dataset.eval_subset=1000"]
        out["cmnist, 3 + 3 epochs"] = [[*cmnist, "experts.epochs=3", "target.epochs=3", *TINY[6:]]]
    return out


def run(tree: Path, args: list[str], out: Path) -> None:
    """`python run.py ARGS` in `tree`, into `out` (a sweep's directory where ARGS sweep)."""
    where = "hydra.sweep.dir" if args[:1] == ["-m"] else "hydra.run.dir"
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, "run.py", *args, f"{where}={out}"], cwd=tree, env=env, capture_output=True)
    if proc.returncode:
        sys.exit(f"error: the case failed in {tree}: {proc.stderr.decode()[-400:]}")


def plain(obj: object) -> object:
    """A results or epoch record without its volatile keys, a config without the keys that change no number
    (labels such as a sweep's study name: denetdm.fingerprint.NOT_NUMERIC)."""
    if isinstance(obj, dict):
        if isinstance(obj.get("config"), dict):  # the config's keys that can change a number
            obj = obj | {"config": fingerprint(obj["config"], "")}
        return {k: plain(v) for k, v in obj.items() if not str(k).startswith(VOLATILE) and "time/" not in str(k)}
    return obj


def differences(a: Path, b: Path) -> list[str]:
    """The files below two run directories that differ, by relative path."""
    found = []
    names = sorted({p.relative_to(a) for p in a.rglob("*") if p.is_file()} | {p.relative_to(b) for p in b.rglob("*")})
    for rel in names:
        if rel.suffix not in (".json", ".jsonl", ".pt") or rel.name in ("stack.json", "wandb_run.json"):
            continue
        x, y = a / rel, b / rel
        if not (x.is_file() and y.is_file()):
            found.append(f"{rel}: only in {'this checkout' if x.is_file() else 'BASE'}")
        elif not same(x, y):
            found.append(str(rel))
    return found


def same(x: Path, y: Path) -> bool:
    """Whether two result files hold the same numbers."""
    if x.suffix == ".pt":
        sx, sy = (torch.load(p, map_location="cpu", weights_only=True) for p in (x, y))
        return equal(plain(sx), plain(sy))
    if x.suffix == ".jsonl":
        return [plain(json.loads(line)) for line in x.read_text().splitlines()] == [
            plain(json.loads(line)) for line in y.read_text().splitlines()
        ]
    return plain(json.loads(x.read_text())) == plain(json.loads(y.read_text()))


def equal(a: object, b: object) -> bool:
    """Deep equality, tensors bit for bit."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    return a == b


def main() -> None:
    """Run every case in both trees and report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base", help="the commit to compare with (e.g. main~3)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="equiv-"))
    base = tmp / "base-tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(base), args.base], cwd=ROOT, check=True)
    differing = 0
    try:
        for name, steps in cases().items():
            folder = "".join(c if c.isalnum() else "_" for c in name)
            dirs = [tmp / side / folder for side in ("head", "base")]
            for tree, out in zip((ROOT, base), dirs):
                for step in steps:
                    run(tree, step, out)
            found = differences(*dirs)
            differing += bool(found)
            print(f"{'DIFFERS' if found else 'same   '} {name}" + (f": {', '.join(found[:5])}" if found else ""))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
    print(f"{differing} of {len(cases())} cases differ from {args.base}")
    sys.exit(1 if differing else 0)


if __name__ == "__main__":
    main()
