"""Checkpoints that the reference code saved (kadarsh22/DeNetDM: `torch.save(model.state_dict())`), read as ours.

Its README's released models are such files. The layout is found from the file itself: the Colored MNIST MLPs
(`bias_branch.0`, depths from the hidden layers), the Corrupted CIFAR-10 ResNet-20 (`bias_branch.conv1` 16x3x3x3)
and the BFFHQ ResNet-18 (64x7x7x3); stage 1 (`debias_branch.c1`: the shallow expert) or stage 2 (the trained
debiasing branch: our target). Its branches map onto our models tensor by tensor, in order (tests/reference/
same_model.py shows the stage-1 models are the same): bias branch -> deep expert, debiasing branch -> shallow
expert (stage 1) or target extractor and projection (stage 2), classifier -> head.
"""

import re
from collections.abc import Mapping

import torch

from denetdm.errors import CheckpointError

# `debias_backbone.`: its Corrupted CIFAR-10 stage 2 registers the ResNet-18 twice (also as `debias_branch.b1`)
PREFIXES = ("debias_branch.", "debias_backbone.", "bias_branch.", "classifier.")
# our state-dict prefixes for the reference's, per kind (the target's extractor and projection share one branch)
PARTS = {
    "stage1": (
        ("bias_branch.", ("model.deep.",)),
        ("debias_branch.", ("model.shallow.",)),
        ("classifier.", ("model.head.",)),
    ),
    "stage2": (
        ("bias_branch.", ("stage1.deep.",)),
        ("classifier.", ("stage1.head.",)),  # the reference's one classifier serves the product and the target
        ("debias_branch.", ("target.extractor.", "target.proj.")),
        ("classifier.", ("target.head.",)),
    ),
}


def is_reference(state: object) -> bool:
    """A plain state dict of the reference's DeNetDM models."""
    return isinstance(state, Mapping) and bool(state) and all(str(k).startswith(PREFIXES) for k in state)


def _count(state: Mapping, pattern: str) -> int:
    return sum(bool(re.fullmatch(pattern, k)) for k in state)


def layout(state: Mapping) -> tuple[str, str, dict]:
    """(dataset family, kind, our model specs) of a reference state dict; one error line for an unknown one."""
    stage = "stage1" if "debias_branch.c1.weight" in state else "stage2"
    if "bias_branch.0.weight" in state:  # Colored MNIST: Linear, ReLU, MLPHiddenlayers; depth counts the classifier
        deep = {"name": "mlp", "depth": 2 + _count(state, r"bias_branch\.2\.hidden_layers\.\d+\.weight"), "width": 100}
        branch = r"debias_branch\.s[12]\.hidden_layers\.\d+\.weight"
        mine = {"name": "mlp", "depth": 2 + _count(state, branch), "width": 100}
        shallow, target = (mine, deep) if stage == "stage1" else ({"name": "mlp", "depth": 3, "width": 100}, mine)
        return "cmnist", stage, {"shallow": shallow, "deep": deep, "target": target}
    conv = state.get("bias_branch.conv1.weight")
    if conv is not None and tuple(conv.shape) == (16, 3, 3, 3):  # Corrupted CIFAR-10: ResNet-20
        blocks = _count(state, r"bias_branch\.layer1\.\d+\.conv1\.weight")
        deep = {"name": "resnet_cifar", "depth": 6 * blocks + 2}
        return "ccifar10", stage, {"shallow": {"name": "cnn", "depth": 3}, "deep": deep, **_target(stage, deep)}
    if conv is not None and tuple(conv.shape) == (64, 3, 7, 7):  # BFFHQ: ResNet-18
        deep = {"name": "resnet", "depth": 18, "pretrained": False}
        return "bffhq", stage, {"shallow": {"name": "cnn_bffhq", "depth": 4}, "deep": deep, **_target(stage, deep)}
    raise CheckpointError(
        "the file holds a state dict of the reference's DeNetDM code, but of no layout known here (Colored MNIST, "
        "Corrupted CIFAR-10 or BFFHQ); give one of those models, or a checkpoint written by run.py"
    )


def _target(stage: str, deep: dict) -> dict:
    # stage 2's debiasing branch is an ImageNet ResNet-18 (with a Linear to 64 on Corrupted CIFAR-10); its weights
    # come from the file, so it is built without downloading pretrained ones
    return {"target": {"name": "resnet", "depth": 18, "pretrained": False} if stage == "stage2" else dict(deep)}


def mapped(state: Mapping, kind: str, ours: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our method's state dict `ours` with every tensor of the reference's `state` in its place: part by part, in
    order, each shape checked (one error line when they do not fit)."""
    out = dict(ours)
    for ref_prefix, our_prefixes in PARTS[kind]:
        theirs = [k for k in state if k.startswith(ref_prefix)]
        mine = [k for p in our_prefixes for k in ours if k.startswith(p)]
        shapes = [tuple(state[a].shape) == tuple(ours[b].shape) for a, b in zip(theirs, mine)]
        if len(theirs) != len(mine) or not all(shapes):
            raise CheckpointError(
                f"the reference checkpoint's {ref_prefix.rstrip('.')} does not fit our {kind} model "
                f"({len(theirs)} tensors against {len(mine)}); is it one of the reference's released models?"
            )
        out.update({b: state[a].to(ours[b].dtype) for a, b in zip(theirs, mine)})
    return out
