"""Fixtures for `stage=eval` on checkpoints that the reference code saved (issue 34): made with its own code.

Not part of the test run (it needs a checkout of kadarsh22/DeNetDM). Writes tests/fixtures/reference_checkpoints/:
- `cmnist_stage2.th`: a Colored MNIST stage-2 model as its code saves one (`torch.save(model.state_dict())`, the
  layout of its released models), after a short training of its stage 1 and stage 2 on our Colored MNIST 1 %
  (severity 4, seed 0), and in `expected.json` its own evaluation of it (train_decam_stage2.py's `evaluate` with
  debias_weight=1, bias_weight=0, on the test split: mean, aligned and conflicting cell accuracy);
- for every layout (Colored MNIST, Corrupted CIFAR-10, BFFHQ; stage 1 and 2) in `expected.json`: the keys and shapes
  of its state dict, and the reference model's eval-mode logits on seeded inputs for weights drawn by `draw` (the
  test draws the same weights from the same seed, so no large file is committed), per branch weighting.

    git --git-dir <mirror of kadarsh22/DeNetDM> archive HEAD | tar -x -C /tmp/ref
    DENETDM_DATA=<data> PYTHONPATH=.:tests python tests/reference/reference_checkpoints.py /tmp/ref
"""

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "reference_checkpoints"
SHAPES = {"cmnist": (3, 28, 28), "ccifar10": (3, 32, 32), "bffhq": (3, 224, 224)}
CLASSES = {
    "cmnist": ("CMNISTDeNetDMModel", 10),
    "ccifar10": ("CCIFARDeNetDMModel", 10),
    "bffhq": ("BFFHQDeNetDModel", 2),
}
WEIGHTS = {"debias": (1, 0), "bias": (0, 1), "poe": (1, 1)}


def draw(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded weights of the given keys and shapes (BatchNorm statistics kept plausible): what the test draws too."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=g) + 0.5
        else:
            out[key] = torch.randn(shape, generator=g) * (0.1 if key.endswith("running_mean") else 0.05)
    return out


def inputs(family: str, n: int = 4) -> torch.Tensor:
    """The seeded inputs the logits are given for."""
    return torch.randn(n, *SHAPES[family], generator=torch.Generator().manual_seed(1))


def layouts(ref) -> dict:
    """Every layout's keys and shapes, and the reference model's logits for drawn weights."""
    out = {}
    for family, (cls, classes) in CLASSES.items():
        for stage in ("1", "2"):
            model = getattr(ref, cls)(num_classes=classes, stage=stage)
            shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
            model.load_state_dict(draw(shapes))
            model.eval()
            with torch.no_grad():
                logits = {b: model(inputs(family), *w).tolist() for b, w in WEIGHTS.items()}
            out[f"{family}_stage{stage}"] = {"shapes": shapes, "logits": logits}
    return out


def trained_cmnist(ref) -> dict:
    """A short stage 1 and stage 2 of the reference's Colored MNIST model on our data; saves the stage-2 file and
    returns the reference's evaluation of it."""
    import os  # noqa: PLC0415

    from denetdm.data.cmnist import ColoredMNIST  # noqa: PLC0415

    data = ColoredMNIST(
        root=os.environ.get("DENETDM_DATA", "data"),
        name="cmnist",
        download=False,
        severity=4,
        conflict_pct=1,
        val_size=1000,
        seed=0,
        cache_dir=os.path.expanduser("~/.cache/denetdm"),
    )
    data = data.load().to("cpu")
    torch.manual_seed(0)
    stage1 = ref.CMNISTDeNetDMModel(num_classes=10, stage="1")
    steps(stage1, stage1.parameters(), lambda x, y: F.cross_entropy(stage1(x), y), data, 1e-3)
    model = ref.CMNISTDeNetDMModel(num_classes=10, stage="2")
    model.load_state_dict(stage1.state_dict(), strict=False)
    params = [*model.debias_branch.parameters(), *model.classifier.parameters()]
    steps(model, params, lambda x, y: F.cross_entropy(model(x), y), data, 1e-3)
    torch.save(model.state_dict(), OUT / "cmnist_stage2.th")  # as train_decam_stage2.py saves it
    return evaluate(model, data.test)


def steps(model, params, loss, data, lr: float, n: int = 300) -> None:
    opt = torch.optim.Adam(params, lr=lr, weight_decay=1e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(n):
        idx = torch.randint(0, len(data.train), (64,), generator=gen)
        opt.zero_grad()
        loss(data.train.x[idx], data.train.y[idx]).backward()
        opt.step()


@torch.no_grad()
def evaluate(model, split) -> dict[str, float]:
    """train_decam_stage2.py's `evaluate(model, loader, debias_weight=1, bias_weight=0)`: cell accuracies."""
    model.eval()
    pred = torch.cat([model(x, debias_weight=1, bias_weight=0).argmax(1) for x, _, _ in split.batches(1000)])
    cells = torch.zeros(10, 10)
    for y in range(10):
        for b in range(10):
            mask = (split.y == y) & (split.b == b)
            cells[y, b] = (pred[mask] == y).float().mean()
    eye = torch.eye(10) > 0
    return {
        "acc_unbiased": cells.mean().item(),
        "acc_aligned": cells[eye].mean().item(),
        "acc_conflicting": cells[~eye].mean().item(),
    }


def main() -> None:
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[1])
    # its stage-2 models of Corrupted CIFAR-10 and BFFHQ ask torchvision for ImageNet weights (the network): the
    # layout is the same without them
    torchvision.models.resnet18 = lambda pretrained=False, **kw: torchvision.models.ResNet(
        torchvision.models.resnet.BasicBlock, [2, 2, 2, 2], **kw
    )
    import module.model as ref  # noqa: PLC0415

    ref.resnet18 = torchvision.models.resnet18
    OUT.mkdir(parents=True, exist_ok=True)
    expected = {"cmnist_stage2_eval": trained_cmnist(ref), "layouts": layouts(ref)}
    (OUT / "expected.json").write_text(json.dumps(expected) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
