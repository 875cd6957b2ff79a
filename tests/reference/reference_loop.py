"""The reference's own models and training loops on our data, for comparison (issues 19 and 20).

Not part of the package or the test run. It imports kadarsh22/DeNetDM's `module/model.py` from a checkout and
trains as its `train_decam_stage1.py` / `train_decam_stage2.py` do: stage 1 the model of both branches with
cross-entropy on their summed features (Adam, the dataset's rate and weight decay, shuffled, last partial batch
dropped); stage 2 (Colored MNIST) a fresh debiasing branch and the stage-1 classifier beside the loaded bias
branch, cross-entropy on the sum plus T^2-scaled distillation from the stage-1 debiasing branch. The data is what
our dataset classes make for the same settings (Corrupted CIFAR-10 with our batch crop-and-flip, the same
distribution as its per-image transforms). Its own selection reads the test split; here each checkpoint is chosen
on our validation split as `selection=val` does (stage 1: the debiasing branch's conflicting accuracy; stage 2:
its unbiased accuracy), and the test-chosen (oracle) value is printed beside. One JSON line per epoch: each
branch's aligned / conflicting / unbiased accuracy (eval mode, the other branch's features zeroed, as its
`evaluate(debias_weight, bias_weight)`), on val and test.

    git --git-dir <mirror of kadarsh22/DeNetDM> archive HEAD | tar -x -C /tmp/ref
    PYTHONPATH=. python tests/reference/reference_loop.py /tmp/ref --dataset cmnist --pct 0.5 --seed 0 --out ref.jsonl
    PYTHONPATH=. python tests/reference/reference_loop.py /tmp/ref --dataset ccifar10 --source <cifar10-jpeg.zip> \\
        --subset 10000 --eval-subset 2000 --epochs 100 --stage2-epochs 0 --probe-every 10 --out ref.jsonl
"""

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from denetdm.analysis.probes import probe_all
from denetdm.metrics import pred_entropy
from denetdm.seeding import derive_seed, generator

# the reference's config.py: (model class, stage-1 batch, lr, weight decay; stage-2 batch, lr)
SETTINGS = {
    "cmnist": ("CMNISTDeNetDMModel", 64, 1e-3, 1e-3, 64, 1e-3),
    "ccifar10": ("CCIFARDeNetDMModel", 256, 1e-3, 1e-3, 256, 1e-4),
}
BRANCHES = {"debias": (1, 0), "bias": (0, 1), "poe": (1, 1)}  # (debias_weight, bias_weight)


def dataset(a: argparse.Namespace):
    """Our dataset object for the setting (not loaded)."""
    common = dict(
        severity=4,
        conflict_pct=a.pct,
        val_size=1000,
        seed=a.seed,
        cache_dir=a.cache_dir,
        subset=a.subset,
        eval_subset=a.eval_subset,
    )
    if a.dataset == "cmnist":
        from denetdm.data.cmnist import ColoredMNIST

        data = ColoredMNIST(root=os.environ.get("DENETDM_DATA", "data"), name="cmnist", download=False, **common)
    else:
        from denetdm.data.ccifar10 import CorruptedCIFAR10

        data = CorruptedCIFAR10(name="ccifar10", root="data", source=a.source, download=False, **common)
    return data


def load_data(a: argparse.Namespace):
    """Our splits for the setting, on the CPU (normalised where the dataset normalises)."""
    data = dataset(a).load()
    return data.to("cpu"), data.augment


@torch.no_grad()
def accuracy(model: torch.nn.Module, split, weights: tuple[int, int]) -> dict[str, float]:
    """Mean accuracy over the aligned / conflicting / all (class, bias) cells, as the reference's meter."""
    model.eval()
    pred = torch.cat(
        [model(x, debias_weight=weights[0], bias_weight=weights[1]).argmax(1) for x, _, _ in split.batches(1024)]
    )
    hist = torch.bincount(pred, minlength=10).double()
    cells = {}
    for y in range(10):
        for b in range(10):
            mask = (split.y == y) & (split.b == b)
            if mask.any():
                cells[(y, b)] = (pred[mask] == y).float().mean().item()
    groups = {"aligned": [v for (y, b), v in cells.items() if y == b], "unbiased": list(cells.values())}
    groups["conflicting"] = [v for (y, b), v in cells.items() if y != b]
    return {f"acc_{k}": sum(v) / len(v) for k, v in groups.items()} | {"pred_entropy": pred_entropy(hist).item()}


def evaluate(model, data, row: dict) -> dict:
    """Every branch on val and test into `row`."""
    for split in ("val", "test"):
        for name, w in BRANCHES.items():
            for k, v in accuracy(model, getattr(data, split), w).items():
                row[f"{name}/{split}/{k}"] = round(v, 5)
    return row


class Branches(torch.nn.Module):
    """The reference model's two branches as `probe_all` reads a method: features by head (shallow, deep)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"shallow": self.model.debias_branch(x), "deep": self.model.bias_branch(x)}


def our_init(ref_model: torch.nn.Module, a: argparse.Namespace) -> None:
    """Stage 1 from the initial weights our run of the same seed draws (copied into the reference's model)."""
    from same_model import SETTINGS as MODELS  # noqa: PLC0415 (needs tests/ on the path; only for --init ours)
    from same_model import ours, pairs  # noqa: PLC0415

    torch.set_num_threads(a.threads)  # importing tests/conftest.py set two
    torch.manual_seed(derive_seed(a.seed, "stage1-init"))  # as denetdm.training.pipeline seeds a phase's init
    experiment = f"paper_{a.dataset}"
    our = ours(experiment, MODELS[experiment][1]).model
    state = our.state_dict()
    ref_model.load_state_dict({x: state[y] for x, y in pairs(ref_model, our)})


def train_stage(model, params, loss_fn, data, augment, a, stage: int, batch: int, lr: float, wd: float, epochs: int):
    """One stage's loop; returns the per-epoch rows and the state chosen on val."""
    opt = torch.optim.Adam(params, lr=lr, weight_decay=wd)
    # with --order ours, stage 1 takes our run's stream for batch order and augmentation (the same draws, in order)
    purpose = "stage1-batches" if a.order == "ours" and stage == 1 else f"reference-stage{stage}"
    gen, rows, best, key = generator(a.seed, purpose), [], None, None
    select = "debias/val/acc_conflicting" if stage == 1 else "debias/val/acc_unbiased"
    for epoch in range(1, epochs + 1):
        t = time.time()
        model.train()
        order = torch.randperm(len(data.train), generator=gen)
        stop = len(order) - batch + 1 if stage == 1 else len(order)  # stage 1 drops the last partial batch
        for i in range(0, stop, batch):
            idx = order[i : i + batch]
            x = data.train.x[idx]
            x = augment(x, gen) if augment is not None else x
            loss = loss_fn(x, data.train.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        row = evaluate(model, data, {"stage": stage, "epoch": epoch, "seconds": round(time.time() - t, 1)})
        if a.probe_every and epoch % a.probe_every == 0:  # as ours with probe.every: val, seeded by seed and epoch
            row |= probe_all(Branches(model), data, f"stage{stage}", seed=a.seed * 1000 + epoch)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if best is None or row[select] > best[select]:
            best, key = row, copy.deepcopy(model.state_dict())
    return rows, best, key


HEADS = {"debias": "shallow", "bias": "deep", "poe": "poe"}  # its branches by our heads' names


def export(rows: list[dict], a: argparse.Namespace) -> None:
    """Stage 1 of a Colored MNIST run as a record of the results store (`--to`): chosen on val as `selection=val`
    does, named `reference_stage1`, so `sweep.py table` and docs/results.md show it beside ours."""
    from denetdm.provenance import commit, machine  # noqa: PLC0415
    from denetdm.reporting import store  # noqa: PLC0415
    from denetdm.verdict import collapse_verdict  # noqa: PLC0415

    epochs = [
        {"stage": "stage1", "epoch": r["epoch"]}
        | {f"stage1/{HEADS[k.split('/')[0]]}/{k.split('/', 1)[1]}": v for k, v in r.items() if "/" in k}
        for r in rows
        if r["stage"] == 1
    ]
    best = max(epochs, key=lambda e: (e["stage1/shallow/val/acc_conflicting"], -e["epoch"]))  # the first best
    shallow, deep = (int(d) for d in a.depths.split(","))
    config = {
        "reference": "kadarsh22/DeNetDM@790e363 module/model.py, its stage-1 loop (tests/reference/reference_loop.py)",
        "dataset": {"name": a.dataset, "severity": 4, "conflict_pct": a.pct, "seed": a.seed},
        "severity": {"level": "4"},
        "model": {"shallow": {"name": "mlp", "depth": shallow}, "deep": {"name": "mlp", "depth": deep}},
        "experts": dict(zip(("batch_size", "lr", "weight_decay"), SETTINGS[a.dataset][1:4])) | {"epochs": a.epochs},
        "method": {"name": "reference_stage1", "final": {"phase": "stage1", "head": "shallow"}},
        "seed": a.seed,
        "selection": "val",
        "data_digest": dataset(a).digest,  # the same source files as our runs': their tables share columns
    }
    rec = {k: v for k, v in best.items() if k.count("/") == 3} | {"stage1/selected_epoch": best["epoch"]}
    entropy = (best[f"stage1/{h}/val/pred_entropy"] for h in ("deep", "shallow"))
    rec |= collapse_verdict(*entropy, a.epochs)  # the verdict our runs record, by the same rule
    rec |= {"method": "reference_stage1", "method_label": "reference code stage 1", "depths": [shallow, deep]}
    rec |= {"seed": a.seed, "selection": "val", "selection_oracle": False, "stages": ["stage1"], "config": config}
    rec |= {"format": store.FORMAT, "source": a.out, "curves": store.curves(epochs)}
    rec["provenance"] = {"commit": a.run_commit or commit(), "machine": machine(torch.device("cpu"))}
    store.write(rec, Path(a.to))


def parse() -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkout")
    p.add_argument("--dataset", choices=sorted(SETTINGS), default="cmnist")
    p.add_argument("--pct", type=float, default=1)
    p.add_argument("--source", default=None, help="CIFAR-10 image tree (Corrupted CIFAR-10)")
    p.add_argument("--subset", type=int, default=None)
    p.add_argument("--eval-subset", type=int, default=None)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--stage2-epochs", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--probe-every", type=int, default=0, help="linear probes of y and b every N epochs (0: none)")
    draws = ("reference", "ours")
    p.add_argument("--init", choices=draws, default="reference", help="ours: stage 1's initial weights as our run's")
    p.add_argument("--order", choices=draws, default="reference", help="ours: stage 1's batches and crops as ours")
    p.add_argument("--depths", default="3,5", help="Colored MNIST: the (shallow, deep) MLP depths, as its model takes")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/denetdm"))
    p.add_argument("--out", required=True, help="the per-epoch JSON lines (with --rows-from: where they came from)")
    p.add_argument("--to", default=None, help="Colored MNIST: also export stage 1 as a store record into this folder")
    p.add_argument("--rows-from", default=None, help="train nothing: export the stage-1 rows of this file (--to)")
    p.add_argument("--run-commit", default=None, help="with --rows-from: the commit the rows were made at")
    return p.parse_args()


def main() -> None:
    a = parse()
    if a.rows_from:
        return export([json.loads(line) for line in open(a.rows_from)], a)
    torch.set_num_threads(a.threads)
    sys.path.insert(0, a.checkout)
    import module.model as ref  # noqa: PLC0415 (the checkout is known only at run time)

    data, augment = load_data(a)
    cls, b1, lr1, wd1, b2, lr2 = SETTINGS[a.dataset]
    torch.manual_seed(a.seed)
    shallow, deep = (int(d) for d in a.depths.split(","))
    # CMNISTDeNetDMModel builds each branch at the depth it is given (a depth counts the shared classifier)
    depths = dict(debias_hidden_layers=shallow, bias_hidden_layers=deep) if a.dataset == "cmnist" else {}
    model = getattr(ref, cls)(num_classes=10, stage="1", **depths)
    if a.init == "ours":
        our_init(model, a)
    ce = lambda x, y: F.cross_entropy(model(x), y)  # noqa: E731
    rows, best1, state1 = train_stage(model, model.parameters(), ce, data, augment, a, 1, b1, lr1, wd1, a.epochs)
    if a.stage2_epochs:
        teacher = getattr(ref, cls)(num_classes=10, stage="1", **depths)
        teacher.load_state_dict(state1)
        teacher.eval()
        student = getattr(ref, cls)(num_classes=10, stage="2", **depths)
        student.load_state_dict(state1, strict=False)  # bias branch and classifier; a fresh debiasing branch

        def loss2(x, y, t=2.0):
            with torch.no_grad():
                soft = F.softmax(teacher(x, debias_weight=1, bias_weight=0) / t, dim=-1)
            log_p = F.log_softmax(student(x, debias_weight=1, bias_weight=0) / t, dim=-1)
            return F.cross_entropy(student(x), y) - (soft * log_p).sum() / len(x) * t**2

        params = [*student.debias_branch.parameters(), *student.classifier.parameters()]
        rows2, best2, _ = train_stage(student, params, loss2, data, augment, a, 2, b2, lr2, 0.0, a.stage2_epochs)
        rows += rows2
    with open(a.out, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    if a.to:
        export(rows, a)
    for stage, key in ((1, "debias/test/acc_conflicting"), (2, "debias/test/acc_unbiased")):
        chosen = [r for r in rows if r["stage"] == stage]
        if chosen:
            val = best1 if stage == 1 else best2
            print(
                f"stage {stage}: {key} chosen on val (epoch {val['epoch']}) {val[key]:.4f}; "
                f"on test (oracle) {max(r[key] for r in chosen):.4f}"
            )


if __name__ == "__main__":
    main()
