"""`make bench`: throughput of stage 1 and stage 2 on Colored MNIST with the real engine and the projected
time of the paper schedule (100 + 100 epochs); then stage-1 samples/s on Corrupted CIFAR-10 of our batched
pipeline against a per-image PIL-transform DataLoader pipeline of the same model (the reference code's way).
Measures and prints; it never fails on a timing. `make bench ARGS='--device cuda'` on a GPU machine.

Uses real MNIST and cifar10-jpeg.zip when $DENETDM_DATA holds them, else generated data of the same sizes.
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
from denetdm.engine import Schedule, Trainer
from denetdm.methods import DeNetDMStage1, DeNetDMStage2
from denetdm.pipeline import build_stage1, build_stage2

# the presets' model specs (conf/backbone_depth/): MLP 3 vs 5 on Colored MNIST, CNN-3 vs ResNet-20 on CIFAR
MLP_PAIR = {"deep": {"name": "mlp", "depth": 5}, "shallow": {"name": "mlp", "depth": 3}}
CIFAR_PAIR = {"deep": {"name": "resnet_cifar", "depth": 20}, "shallow": {"name": "cnn", "depth": 3}}


def _meta(shape: tuple[int, ...], pair: dict) -> dict:
    return {"input_shape": list(shape), "num_classes": 10, "model": {**pair, "target": pair["deep"]}}


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

        ds = CorruptedCIFAR10(name="ccifar10", root="", source=str(zipped), severity=4, conflict_pct=1,
                              val_size=1000, seed=0, cache_dir=cache)  # fmt: skip
        return "Corrupted CIFAR-10 (Type0, severity 4)", ds.load()
    from denetdm.data.augment import CIFAR_MEAN as MEAN
    from denetdm.data.augment import CIFAR_STD as STD
    from denetdm.data.augment import BatchAugment
    from denetdm.data.splits import BiasedData, Split

    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (4096, 3, 32, 32), dtype=torch.uint8, generator=g),
                  torch.randint(0, 10, (4096,), generator=g), torch.randint(0, 10, (4096,), generator=g))  # fmt: skip
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
    meta = _meta(tuple(train.x.shape[1:]), CIFAR_PAIR)

    def stage1(channels_last: bool) -> DeNetDMStage1:
        torch.manual_seed(0)
        fmt = torch.channels_last if channels_last else torch.preserve_format
        return build_stage1(meta, adam, lr=1e-3, weight_decay=1e-3).to(device, memory_format=fmt)

    def stage2(first: DeNetDMStage1, channels_last: bool) -> DeNetDMStage2:
        fmt = torch.channels_last if channels_last else torch.preserve_format
        return build_stage2(meta, first, adam, lr=1e-4).to(device, memory_format=fmt)

    on_device = train.to(device, data.normalize, channels_last=True)

    def ours_batches():  # preloaded normalised tensors, augmentation on the whole batch on the device
        gen = torch.Generator().manual_seed(0)
        for x, y, idx in on_device.batches(batch_size, gen):
            yield data.augment(x, gen), y, idx

    def reference_batches():  # PIL images through per-image transforms in a DataLoader
        for x, y in _per_image_loader(train, batch_size):
            yield x.to(device), y.to(device), torch.arange(len(y), device=device)

    rows = []
    for label, channels_last, batches in (("batched tensors (ours)", True, ours_batches),
                                          ("per-image PIL + DataLoader", False, reference_batches)):  # fmt: skip
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
    ap.add_argument("--epochs", type=int, default=3, help="epochs per stage to time (the first is a warm-up)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cifar-steps", type=int, default=8, help="timed stage-1 steps of the CIFAR comparison")
    ap.add_argument("--skip-mnist", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cache = os.environ.get("DENETDM_CACHE", os.path.expanduser("~/.cache/denetdm"))
    if not args.skip_mnist:
        bench_mnist(cache, args)
    bench_cifar(cache, args.device, args.cifar_steps)


def bench_mnist(cache: str, args: argparse.Namespace) -> None:
    """Stage 1 and stage 2 on Colored MNIST with the real engine, and the projected paper schedule."""
    t0 = time.time()
    name, data = _data(cache)
    data = data.to(args.device)
    print(f"data: {name}, {len(data.train)} train samples, loaded in {time.time() - t0:.1f} s on {args.device}")
    adam = functools.partial(torch.optim.Adam, fused=True)
    meta = _meta(data.input_shape, MLP_PAIR)
    torch.manual_seed(0)
    stage1 = build_stage1(meta, adam, lr=1e-3, weight_decay=1e-3).to(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(tmp, selection="val", progress=False)
        trainer.fit("stage1", stage1, data, Schedule(args.epochs, 64, "shallow/acc_conflicting", 0), {}, resume=False)
        stage2 = build_stage2(meta, stage1, adam, lr=1e-3).to(args.device)
        trainer.fit("stage2", stage2, data, Schedule(args.epochs, 64, "target/acc_unbiased", 1), {}, resume=False)
        records = trainer.records.read()
    for stage in ("stage1", "stage2"):
        timed = [r for r in records if r["stage"] == stage][1:] or [r for r in records if r["stage"] == stage]
        train_s = sum(r[f"{stage}/time/train_s"] for r in timed) / len(timed)
        epoch_s = sum(r[f"{stage}/time/epoch_s"] for r in timed) / len(timed)
        rows.append((stage, len(data.train) / train_s, train_s, epoch_s))
    print(f"{'stage':<8}{'train samples/s':>18}{'train s/epoch':>16}{'s/epoch incl. eval':>20}")
    for stage, sps, train_s, epoch_s in rows:
        print(f"{stage:<8}{sps:>18.0f}{train_s:>16.2f}{epoch_s:>20.2f}")
    total = 100 * rows[0][3] + 100 * rows[1][3]
    print(f"projected paper schedule (100 + 100 epochs, batch 64): {total / 60:.1f} min")


if __name__ == "__main__":
    main()
