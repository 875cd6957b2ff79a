"""`make bench`: throughput of stage 1 and stage 2 on Colored MNIST with the real engine, and the projected
time of the paper schedule (100 + 100 epochs). Measures and prints; it never fails on a timing.

Uses real MNIST when $DENETDM_DATA holds it, else coloured shapes at MNIST scale (same tensor sizes).
"""

import argparse
import functools
import os
import tempfile
import time
from pathlib import Path

import torch

from denetdm.data.cmnist import ColoredMNIST
from denetdm.data.synthetic import SyntheticShapes
from denetdm.engine import Trainer
from denetdm.methods import DeNetDMStage1, DeNetDMStage2
from denetdm.models import TargetModel, TwoExpertModel, create_backbone


def _data(cache: str):
    common = dict(severity=4, conflict_pct=1, val_size=1000, seed=0, cache_dir=cache)
    root = os.environ.get("DENETDM_DATA", "./data")
    if (Path(root) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        return "Colored MNIST (real MNIST)", ColoredMNIST(root=root, name="cmnist", download=False, **common).load()
    return "coloured shapes at MNIST scale (no MNIST found)", SyntheticShapes(
        name="synthetic", train_size=60000, test_size=10000, **common
    ).load()


def main() -> None:
    """Run the benchmark and print its table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per stage to time (the first is a warm-up)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cache = os.environ.get("DENETDM_CACHE", os.path.expanduser("~/.cache/denetdm"))
    t0 = time.time()
    name, data = _data(cache)
    data = data.to(args.device)
    print(f"data: {name}, {len(data.train)} train samples, loaded in {time.time() - t0:.1f} s on {args.device}")
    adam = functools.partial(torch.optim.Adam, fused=True)
    shape = data.input_shape
    torch.manual_seed(0)
    model = TwoExpertModel(create_backbone("mlp", shape, depth=5), create_backbone("mlp", shape, depth=3), 10)
    stage1 = DeNetDMStage1(model, adam, lr=1e-3, weight_decay=1e-3).to(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(tmp, selection="val", progress=False)
        trainer.fit("stage1", stage1, data, args.epochs, 64, "shallow/acc_conflicting", 0, {}, resume=False)
        target = TargetModel(create_backbone("mlp", shape, depth=5), model.head)
        stage2 = DeNetDMStage2(model, target, adam, lr=1e-3).to(args.device)
        trainer.fit("stage2", stage2, data, args.epochs, 64, "target/acc_unbiased", 1, {}, resume=False)
        records = trainer.records.read()
    for stage in ("stage1", "stage2"):
        timed = [r for r in records if r["stage"] == stage][1:] or [r for r in records if r["stage"] == stage]
        train_s = sum(r["time/train_s"] for r in timed) / len(timed)
        epoch_s = sum(r["time/epoch_s"] for r in timed) / len(timed)
        rows.append((stage, len(data.train) / train_s, train_s, epoch_s))
    print(f"{'stage':<8}{'train samples/s':>18}{'train s/epoch':>16}{'s/epoch incl. eval':>20}")
    for stage, sps, train_s, epoch_s in rows:
        print(f"{stage:<8}{sps:>18.0f}{train_s:>16.2f}{epoch_s:>20.2f}")
    total = 100 * rows[0][3] + 100 * rows[1][3]
    print(f"projected paper schedule (100 + 100 epochs, batch 64): {total / 60:.1f} min")


if __name__ == "__main__":
    main()
