"""`make bench`: seconds per epoch of every method (conf/method/) on Colored MNIST with the real engine, and the
projected time of its paper schedule; then stage-1 samples/s on Corrupted CIFAR-10 of our batched
pipeline against a per-image PIL-transform DataLoader pipeline of the same model (the reference code's way).
Measures and prints; it never fails on a timing. `make bench ARGS='--device cuda'` on a GPU machine.

Uses real MNIST and cifar10-jpeg.zip when $DENETDM_DATA holds them, else generated data of the same sizes.
"""

import argparse
import dataclasses
import functools
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml

from denetdm.data.cmnist import ColoredMNIST
from denetdm.data.synthetic import SyntheticShapes
from denetdm.methods import DeNetDMStage1, DeNetDMStage2
from denetdm.selection import PROTOCOLS
from denetdm.training import phases as ph
from denetdm.training.loop import Trainer
from denetdm.training.pipeline import context

CONF = Path(__file__).resolve().parents[1] / "conf"
# the cnn3_resnet20 preset (conf/backbone_depth/): CNN-3 vs ResNet-20, target = ResNet-20
# stage 2's hyperparameters as their one home, conf/method/denetdm.yaml, sets them
STAGE2 = ph.hparams(ph.resolve(yaml.safe_load((CONF / "method" / "denetdm.yaml").read_text()))["phases"]["stage2"])
CIFAR_SPECS = {"deep": {"name": "resnet_cifar", "depth": 20}, "shallow": {"name": "cnn", "depth": 3}}
CIFAR_SPECS["target"] = CIFAR_SPECS["deep"]


def _data(cache: str):
    common = dict(severity=4, conflict_pct=1, val_size=1000, seed=0, cache_dir=cache)
    root = os.environ.get("DENETDM_DATA", "./data")
    if (Path(root) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        return "Colored MNIST (real MNIST)", ColoredMNIST(root=root, name="cmnist", download=False, **common).load()
    return "coloured shapes at MNIST scale (no MNIST found)", SyntheticShapes(
        name="synthetic", train_size=60000, test_size=10000, **common
    ).load()


def _cifar_data(cache: str):
    """Corrupted CIFAR-10 from $DENETDM_DATA/cifar10-jpeg.zip when present, else random CIFAR-sized images."""
    zipped = Path(os.environ.get("DENETDM_DATA", "./data")) / "cifar10-jpeg.zip"
    if zipped.exists():
        from denetdm.data.ccifar10 import CorruptedCIFAR10

        ds = CorruptedCIFAR10(
            name="ccifar10",
            root="",
            source=str(zipped),
            severity=4,
            conflict_pct=1,
            val_size=1000,
            seed=0,
            cache_dir=cache,
        )
        return "Corrupted CIFAR-10 (Type0, severity 4)", ds.load()
    from denetdm.data.augment import CIFAR_MEAN as MEAN
    from denetdm.data.augment import CIFAR_STD as STD
    from denetdm.data.augment import BatchAugment
    from denetdm.data.splits import BiasedData, Split

    g = torch.Generator().manual_seed(0)
    split = Split(
        torch.randint(0, 256, (4096, 3, 32, 32), dtype=torch.uint8, generator=g),
        torch.randint(0, 10, (4096,), generator=g),
        torch.randint(0, 10, (4096,), generator=g),
    )
    fill = [-m / s for m, s in zip(MEAN, STD)]
    return "random CIFAR-sized images (no cifar10-jpeg.zip found)", BiasedData(
        "random", split, split, split, 10, 10, normalize=(MEAN, STD), augment=BatchAugment(4, True, fill)
    )


def _per_image_loader(split, batch_size: int):
    """The reference code's way: PIL images, per-image torchvision transforms, a DataLoader."""
    import torchvision.transforms as T
    from PIL import Image

    from denetdm.data.augment import CIFAR_MEAN as MEAN
    from denetdm.data.augment import CIFAR_STD as STD

    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    images = split.x.permute(0, 2, 3, 1).numpy()

    class PerImage(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, i: int):
            return tf(Image.fromarray(images[i])), int(split.y[i])

    return torch.utils.data.DataLoader(PerImage(), batch_size=batch_size, shuffle=True, num_workers=0)


def _timed_steps(method, batches) -> float:
    """Samples/s over the batches after the first (a warm-up); each step timed from the end of the last,
    so fetching and transforming the batch count too."""
    times, sizes, t0 = [], [], time.time()
    for x, y, idx in batches:
        method.update(x, y, idx)
        times.append(time.time() - t0)
        sizes.append(len(y))
        t0 = time.time()
    return sum(sizes[1:]) / sum(times[1:])


def bench_cifar(cache: str, device: str, steps: int, batch_size: int = 256) -> None:
    """Stage-1 and stage-2 samples/s of our batched pipeline vs a per-image PIL DataLoader pipeline."""
    name, data = _cifar_data(cache)
    n = batch_size * (steps + 1)
    train = data.train.subset(min(n, len(data.train)), torch.Generator().manual_seed(0))
    print(f"\ncifar data: {name}; {steps} timed steps of batch {batch_size} (after one warm-up step)")
    adam = functools.partial(torch.optim.Adam, fused=True)
    bench_data = replace(data, train=train)

    def stage1(channels_last: bool) -> DeNetDMStage1:
        torch.manual_seed(0)
        fmt = torch.channels_last if channels_last else torch.preserve_format
        ctx = context(bench_data, CIFAR_SPECS, adam, 1e-3, 1e-3)
        return DeNetDMStage1.build(ctx, None).to(device, memory_format=fmt)

    def stage2(first: DeNetDMStage1, channels_last: bool) -> DeNetDMStage2:
        fmt = torch.channels_last if channels_last else torch.preserve_format
        return DeNetDMStage2.build(context(bench_data, CIFAR_SPECS, adam, 1e-4), first, **STAGE2).to(
            device, memory_format=fmt
        )

    on_device = train.to(device, data.normalize, channels_last=True)

    def ours_batches():  # preloaded normalised tensors, augmentation on the whole batch on the device
        gen = torch.Generator().manual_seed(0)
        for x, y, idx in on_device.batches(batch_size, gen):
            yield data.augment(x, gen), y, idx

    def reference_batches():  # PIL images through per-image transforms in a DataLoader
        for x, y in _per_image_loader(train, batch_size):
            yield x.to(device), y.to(device), torch.arange(len(y), device=device)

    rows = []
    for label, channels_last, batches in (
        ("batched tensors (ours)", True, ours_batches),
        ("per-image PIL + DataLoader", False, reference_batches),
    ):
        first = stage1(channels_last)
        sps1 = _timed_steps(first, batches())
        rows.append((label, sps1, _timed_steps(stage2(first, channels_last), batches())))
    print(f"{'pipeline':<30}{'stage-1 samples/s':>20}{'stage-2 samples/s':>20}")
    for label, s1, s2 in rows:
        print(f"{label:<30}{s1:>20.0f}{s2:>20.0f}")
    print(f"speed-up: stage 1 {rows[0][1] / rows[1][1]:.2f}x, stage 2 {rows[0][2] / rows[1][2]:.2f}x")


def main() -> None:
    """Run the benchmark and print its tables."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per phase to time (the first is a warm-up)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cifar-steps", type=int, default=8, help="timed stage-1 steps of the CIFAR comparison")
    ap.add_argument("--skip-mnist", action="store_true")
    ap.add_argument("--methods", nargs="*", help="methods to time (default: every conf/method/*.yaml)")
    ap.add_argument("--stack-sizes", type=int, nargs="*", default=[1, 4, 16], help="K runs per stack to time")
    ap.add_argument("--stack-steps", type=int, default=20, help="timed steps per stack size")
    ap.add_argument("--skip-stacked", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cache = os.environ.get("DENETDM_CACHE", os.path.expanduser("~/.cache/denetdm"))
    if not args.skip_mnist:
        bench_mnist(cache, args)
    if not args.skip_stacked:
        bench_stacked(cache, args)
    bench_cifar(cache, args.device, args.cifar_steps)


def _method_config(name: str) -> dict:
    """conf/method/<name>.yaml resolved with the Colored MNIST paper setting (its schedules, MLP 3 vs 5)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=paper_cmnist", f"method={name}", "logger=none"])
    config = OmegaConf.to_container(cfg, resolve=True)
    return config | {"method": ph.resolve(config["method"])}  # each phase node with its hyperparameters


def _phases(config: dict) -> dict:
    """The method's phases as a run's plan resolves them (batch orders from seed 0)."""
    return ph.plan_phases(config, config["method"], dict.fromkeys(ph.phases(config["method"]), 0))


def _time_method(name: str, data, args: argparse.Namespace) -> list[tuple[str, float, float]]:
    """(phase, s/epoch incl. evaluation, paper-schedule epochs) of each phase of a method, run for args.epochs."""
    config = _method_config(name)
    adam = functools.partial(torch.optim.Adam, fused=True)
    previous, rows = None, []
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(tmp, protocol=PROTOCOLS["last"], progress=False)
        for phase, planned in _phases(config).items():
            paper = planned.schedule
            ctx = context(data, config["model"], adam, paper.lr, paper.weight_decay)
            torch.manual_seed(0)
            previous = planned.build(ctx, previous).to(args.device)
            epochs = min(args.epochs, paper.epochs)
            trainer.fit(
                phase,
                previous,
                data,
                dataclasses.replace(paper, epochs=epochs),
                {},
                resume=False,
            )
            timed = [r for r in trainer.recorder.records.read() if r["stage"] == phase]
            timed = timed[1:] or timed  # the first epoch is a warm-up
            rows.append((phase, sum(r[f"{phase}/time/epoch_s"] for r in timed) / len(timed), paper.epochs))
    return rows


def _stacked_step_s(
    data, config: dict, k: int, vectorize: bool, device: str, steps: int, captured: bool = False
) -> list[float]:
    """Seconds per step of K DeNetDM members (stage 1, stage 2): vmapped as one Stack, or stepped in turn; their
    steps captured as CUDA graphs or not."""
    from denetdm.training.captured import make_capturable

    adam = functools.partial(torch.optim.Adam, fused=True)
    out, previous = [], [None] * k
    for planned in _phases(config).values():
        batch = planned.schedule.batch_size
        ctx = context(data, config["model"], adam, planned.schedule.lr, planned.schedule.weight_decay)
        members = []
        for m in range(k):
            torch.manual_seed(m)
            members.append(planned.build(ctx, previous[m]).to(device))
            members[-1].prepare(data.train, augmented=False)
            members[-1].train()
        g = torch.Generator().manual_seed(0)
        idx = torch.randint(0, len(data.train), (steps + 2, k, batch), generator=g).to(device)
        x, y = data.train.x[idx], data.train.y[idx]  # (steps, K, B, ...)
        if captured:
            make_capturable([m.optimizer for m in members])
        step = _bench_step(members, vectorize, captured)
        t0 = 0.0
        for i in range(steps + 2):
            if i == 2:  # two warm-up steps
                _sync(device)
                t0 = time.perf_counter()
            step(*(t for m in range(k) for t in (x[i, m], y[i, m], idx[i, m])))
        _sync(device)
        out.append((time.perf_counter() - t0) / steps)
        previous = members
    return out


def _bench_step(members: list, vectorize: bool, captured: bool):
    """One step of K members on their flat (x, y, idx) triples: vmapped as one Stack or in turn, captured or not."""
    from denetdm.training.captured import CapturedStep, make_capturable
    from denetdm.training.stacked import Stack

    def triples(flat: tuple) -> list[tuple]:
        return [flat[i : i + 3] for i in range(0, len(flat), 3)]

    if not vectorize:
        each = [CapturedStep(m.update) if captured else m.update for m in members]
        return lambda *flat: [step(*t) for step, t in zip(each, triples(flat), strict=True)]
    stack = Stack(members)
    if captured:
        make_capturable([stack.optimizer])
    return CapturedStep(lambda *flat: stack.update(triples(flat))) if captured else lambda *f: stack.update(triples(f))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_stacked(cache: str, args: argparse.Namespace) -> None:
    """DeNetDM runs per hour on Colored MNIST's paper schedule: K runs one after another or stacked."""
    _, data = _data(cache)
    data = data.to(args.device)
    config = _method_config("denetdm")
    n = len(data.train)
    sched = [(config[s]["epochs"], -(-n // config[s]["batch_size"])) for s in ("stage1", "stage2")]
    print(
        f"\nDeNetDM, Colored MNIST paper schedule ({sched[0][0]} + {sched[1][0]} epochs), training steps only, "
        f"on {args.device}: runs per hour"
    )
    print(f"{'K':>4}  {'how':<32}{'stage-1 ms/step':>16}{'stage-2 ms/step':>16}{'runs/hour':>11}")
    for k in args.stack_sizes:
        hows = [("plain steps, members in turn", False, False), ("stacked, vmapped", True, False)]
        if args.device.startswith("cuda"):
            hows += [("captured steps, in turn", False, True), ("captured, vmapped", True, True)]
        for how, vec, cap in hows:
            if k == 1 and vec:
                continue
            s1, s2 = _stacked_step_s(data, config, k, vec, args.device, args.stack_steps, cap)
            hours = (sched[0][0] * sched[0][1] * s1 + sched[1][0] * sched[1][1] * s2) / 3600
            print(f"{k:>4}  {how:<32}{s1 * 1e3:>16.2f}{s2 * 1e3:>16.2f}{k / hours:>11.1f}")
    if not args.device.startswith("cuda"):
        print("captured (CUDA-graph) steps: CUDA only (--device cuda)")


def bench_mnist(cache: str, args: argparse.Namespace) -> None:
    """Every method on Colored MNIST with the real engine: seconds per epoch, the projected paper schedule."""
    t0 = time.time()
    name, data = _data(cache)
    data = data.to(args.device)
    print(f"data: {name}, {len(data.train)} train samples, loaded in {time.time() - t0:.1f} s on {args.device}")
    print(f"{'method':<22}{'phase':<10}{'s/epoch incl. eval':>20}{'paper epochs':>14}{'projected min':>15}")
    for method in args.methods or sorted(p.stem for p in (CONF / "method").glob("*.yaml")):
        rows = _time_method(method, data, args)
        for phase, epoch_s, epochs in rows:
            print(f"{method:<22}{phase:<10}{epoch_s:>20.2f}{epochs:>14}{epoch_s * epochs / 60:>15.1f}")
        print(f"{method:<22}{'total':<10}{'':>20}{'':>14}{sum(s * e for _, s, e in rows) / 60:>15.1f}")


if __name__ == "__main__":
    main()
