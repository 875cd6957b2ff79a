"""Our stage-1 product of experts is the reference's model (issue 20): given its weights, the same outputs.

Not part of the test run (it needs a checkout of kadarsh22/DeNetDM). For each paper setting, it builds the
reference's `CMNISTDeNetDMModel` / `CCIFARDeNetDMModel` (stage 1) and ours from the experiment's config, copies the
reference's parameters and buffers into ours in order (bias branch -> deep expert, debias branch -> shallow
expert, classifier -> head), checks that every shape agrees and that both give the same logits, in train and eval
mode, for the product and for each expert alone (the other's features zeroed), and that three training steps on
the same batches (its Adam and loss, ours as the config builds them) leave the same weights; then compares the spread
of each freshly initialised weight tensor (both drawn from the same distributions).

    git --git-dir <mirror of kadarsh22/DeNetDM> archive HEAD | tar -x -C /tmp/ref
    PYTHONPATH=.:tests python tests/reference/same_model.py /tmp/ref
"""

import sys

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from denetdm.methods.denetdm import DeNetDMStage1
from denetdm.models.experts import TwoExpertModel, build_backbone

from conftest import compose_cfg

SETTINGS = {"paper_cmnist": ("CMNISTDeNetDMModel", (3, 28, 28)), "paper_ccifar10": ("CCIFARDeNetDMModel", (3, 32, 32))}
PARTS = (("bias_branch.", "deep."), ("debias_branch.", "shallow."), ("classifier.", "head."))


def ours(experiment: str, shape: tuple[int, ...]) -> DeNetDMStage1:
    """The experiment's stage 1 (model, optimiser, rate and weight decay) as the config builds it."""
    cfg = compose_cfg([f"experiment={experiment}"])
    model = TwoExpertModel(build_backbone(cfg.model.deep, shape), build_backbone(cfg.model.shallow, shape), 10)
    return DeNetDMStage1(model, instantiate(cfg.optimizer), lr=cfg.experts.lr, weight_decay=cfg.experts.weight_decay)


def steps(ref: torch.nn.Module, our: DeNetDMStage1, keys: list, lr: float, shape: tuple[int, ...]) -> float:
    """Three training steps on the same batches: the reference's (Adam, cross-entropy on the product, its config's
    rate and weight decay) and ours; the largest parameter difference after them. In float64: Adam's first steps
    are +-lr wherever a gradient is not zero, so in float32 a gradient near zero turns rounding into 1e-3."""
    ref.double(), our.double()
    opt = torch.optim.Adam(ref.parameters(), lr=lr, weight_decay=1e-3)  # config.py: both settings
    our.optimizer = type(our.optimizer)(our.model.parameters(), **our.optimizer.defaults)  # on the float64 weights
    ref.train(), our.train()
    for _ in range(3):
        x, y = torch.randn(64, *shape, dtype=torch.float64), torch.randint(0, 10, (64,))
        opt.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        opt.step()
        our.update(x, y, torch.arange(64))
    rs, os_ = ref.state_dict(), our.model.state_dict()
    return max((rs[x] - os_[y]).abs().max().item() for x, y in keys if rs[x].is_floating_point())


def pairs(ref: torch.nn.Module, our: torch.nn.Module) -> list[tuple[str, str]]:
    """(reference key, our key) of each state tensor, part by part in order; fails on a count or shape mismatch."""
    rs, os_ = ref.state_dict(), our.state_dict()
    out = []
    for rp, op in PARTS:
        a, b = [k for k in rs if k.startswith(rp)], [k for k in os_ if k.startswith(op)]
        assert len(a) == len(b), f"{rp}: {len(a)} tensors in the reference, {len(b)} in ours"
        out += [(x, y) for x, y in zip(a, b, strict=True)]
        assert all(rs[x].shape == os_[y].shape for x, y in out), "a shape differs"
    assert len(out) == len(os_), "ours has tensors the reference has not"
    return out


def compare(ref_module, experiment: str, cls: str, shape: tuple[int, ...]) -> None:
    """Same weights, same logits; and each fresh tensor's spread beside the reference's."""
    torch.manual_seed(0)
    ref, method = getattr(ref_module, cls)(num_classes=10, stage="1"), ours(experiment, shape)
    our = method.model
    keys = pairs(ref, our)
    fresh = {y: our.state_dict()[y].clone() for _, y in keys}
    start = {k: v.clone() for k, v in ref.state_dict().items()}
    x = torch.randn(32, *shape)
    for mode in (True, False):
        # from the same state each time: the reference's three train-mode calls move its BatchNorm statistics
        ref.load_state_dict(start), our.load_state_dict({y: start[x_] for x_, y in keys})
        ref.train(mode), our.train(mode)
        experts = our.experts(x)
        for name, (dw, bw) in (("poe", (1, 1)), ("shallow", (1, 0)), ("deep", (0, 1))):
            gap = (ref(x, debias_weight=dw, bias_weight=bw) - experts[name]).abs().max().item()
            print(f"{experiment} {'train' if mode else 'eval'} {name}: largest logit difference {gap:.2e}")
            assert gap < 1e-4
    ratios = {
        x_key: (start[x_key].std() / fresh[y_key].std()).item()
        for x_key, y_key in keys
        if start[x_key].is_floating_point() and start[x_key].numel() >= 256 and start[x_key].std() > 0
    }
    ref.load_state_dict(start), our.load_state_dict({y: start[x_] for x_, y in keys})
    gap = steps(ref, method, keys, 1e-3, shape)
    print(f"{experiment}: after three training steps, largest parameter difference {gap:.2e}")
    assert gap < 1e-9
    worst = max(ratios, key=lambda k: abs(ratios[k] - 1))
    print(
        f"{experiment} fresh init, {len(ratios)} weight tensors: std reference / ours furthest from 1 at {worst}: "
        f"{ratios[worst]:.3f}"
    )


if __name__ == "__main__":
    sys.path.insert(0, sys.argv[1])
    import module.model as reference  # noqa: PLC0415 (the checkout is known only at run time)

    for experiment, (cls, shape) in SETTINGS.items():
        compare(reference, experiment, cls, shape)
    print("same model: yes")
