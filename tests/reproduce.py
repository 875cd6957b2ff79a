"""`make gpu-reproduce`: the paper cells still unmeasured, as stacks, in order of need, within a time budget.

Each step is one `run.py -m ... launcher=stacked` sweep; after it, its finished runs are exported as records into
`<out>/results/<store>` (the committed store's layout) and, with `--pack`, all records so far into one tarball
(a GPU session brings back few files). A step gets the time left; one cut off by the budget leaves its finished
stacks exported. `--tiny` runs the same steps at a tiny size, so that the script is tested on a CPU before a GPU
session spends its minutes on it.

    python tests/reproduce.py --out OUT [--budget 540] [--steps a,b] [--cifar-source PATH] [--pack F] [--tiny]
"""

import argparse
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from denetdm.errors import ConfigError
from denetdm.models.resnet_imagenet import check_pretrained_available

ROOT = Path(__file__).resolve().parents[1]  # the checkout
C10 = ["experiment=paper_ccifar10", "seed=0,1,2"]
# (name, overrides, store): the paper's ablations at Colored MNIST 1 % (issue 38: three stacks of three seeds), then
# the Corrupted CIFAR-10 1 % cell (issue 20). The Colored MNIST stack's cost is measured (results/cmnist_gpu_stack16).
ABLATIONS = "method=denetdm_stage1,denetdm_poe_only,denetdm_distill_only"
STEPS = [
    ("cmnist_ablations", ["experiment=paper_cmnist", ABLATIONS, "seed=0,1,2"], "cmnist_ablations"),
    ("ccifar10_denetdm", C10, "ccifar10_table1"),
    ("ccifar10_erm", [*C10, "method=erm"], "ccifar10_table1"),
    ("ccifar10_lff", [*C10, "method=lff"], "ccifar10_table1"),
]
# the tiny size of the CPU test: few samples and epochs, the same sweeps
TINY = ["dataset.subset=256", "dataset.val_size=50", "dataset.eval_subset=100", "experts.epochs=1", "target.epochs=1"]


def cifar_overrides(source: str | None) -> list[str]:
    """Where the CIFAR-10 images are, and a from-scratch target when the ImageNet ResNet-18 weights are not at
    hand (model.target.pretrained=false is in the records' fingerprints, so such records stay apart)."""
    out = [f"dataset.source={Path(source).resolve()}"] if source else []
    try:
        check_pretrained_available("resnet18")
    except ConfigError as e:
        print(f"reproduce: {e}: the Corrupted CIFAR-10 target trains from scratch", flush=True)
        out.append("model.target.pretrained=false")
    return out


def run_step(name: str, overrides: list[str], out: Path, seconds: float) -> bool:
    """One sweep as stacks under `out/runs/<name>`, killed after `seconds`; True when each of its runs finished (a
    sweep goes on past a failed job, so its exit status alone does not say)."""
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        "-m",
        *overrides,
        "launcher=stacked",
        "logger=none",
        "progress=false",
        f"hydra.sweep.dir={out / 'runs' / name}",
    ]
    print(f"reproduce: {name} ({seconds:.0f} s left): {' '.join(cmd[3:])}", flush=True)
    t = time.monotonic()
    try:
        ok = subprocess.run(cmd, cwd=ROOT, timeout=seconds).returncode == 0
    except subprocess.TimeoutExpired:
        ok = False
    jobs = [d for d in (out / "runs" / name).iterdir() if d.is_dir() and d.name.isdigit()] if ok else []
    ok = ok and bool(jobs) and all((d / "results.json").exists() for d in jobs)
    print(f"reproduce: {name} {'finished' if ok else 'NOT finished'} after {time.monotonic() - t:.0f} s", flush=True)
    return ok


def export(name: str, store: str, out: Path, pack: Path | None) -> None:
    """Records of the step's finished runs into `out/results/<store>`, and all records into `pack`."""
    runs = out / "runs" / name
    if any(runs.glob("**/results.json")):
        cmd = [sys.executable, str(ROOT / "sweep.py"), "export", str(runs), "--to", str(out / "results" / store)]
        subprocess.run(cmd, cwd=ROOT, check=False)
    if pack is not None and (out / "results").is_dir():
        with tarfile.open(pack, "w:gz") as tar:
            tar.add(out / "results", arcname="results")


def main(argv: list[str] | None = None) -> int:
    """Run the chosen steps in order until the budget is spent; say which finished (exit 1 if any did not)."""
    p = argparse.ArgumentParser(description="the paper cells still unmeasured, as stacks, within a time budget")
    p.add_argument("--out", required=True, help="folder for the run directories and the exported records")
    p.add_argument("--budget", type=float, default=540, help="seconds for all steps (default 540)")
    p.add_argument("--steps", default=None, help="comma-separated step names (default: all, in order)")
    p.add_argument("--cifar-source", default=None, help="CIFAR-10 image tree (folder or .zip) for dataset.source")
    p.add_argument("--pack", default=None, help="a .tar.gz to hold every exported record, rewritten after each step")
    p.add_argument("--tiny", action="store_true", help="a tiny size, for a test on any machine")
    a = p.parse_args(argv)
    names = [s[0] for s in STEPS]
    chosen = names if a.steps is None else a.steps.split(",")
    if not chosen or any(n not in names for n in chosen):
        raise SystemExit(f"error: --steps takes names among {', '.join(names)}; got {a.steps!r}")
    out, deadline = Path(a.out).resolve(), time.monotonic() + a.budget
    pack = Path(a.pack).resolve() if a.pack else None
    cifar = cifar_overrides(a.cifar_source) if any(n.startswith("ccifar10") for n in chosen) else []
    left = []
    for name, overrides, store in (s for s in STEPS if s[0] in chosen):
        extra = (TINY if a.tiny else []) + (cifar if name.startswith("ccifar10") else [])
        seconds = deadline - time.monotonic()
        if not (seconds > 30 and run_step(name, [*overrides, *extra], out, seconds)):
            left.append(name)
        export(name, store, out, pack)
    print(f"reproduce: not finished: {', '.join(left) or 'none'}", flush=True)
    return 1 if left else 0


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "disabled")
    sys.exit(main())
