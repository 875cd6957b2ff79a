"""Backbones (every registry entry), the product-of-experts property and the stage-2 method."""

import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from denetdm.data.splits import Split
from denetdm.errors import ConfigError
from denetdm.methods import BuildContext, DeNetDMStage1, DeNetDMStage2
from denetdm.models import TargetModel, TwoExpertModel, create_backbone, list_backbones
from denetdm.training.pipeline import uses_channels_last

from conftest import method_hparams

SHAPE = (3, 32, 32)


@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_maps_images_to_num_features(name):
    shape = (3, 48, 48) if name == "cnn_bffhq" else SHAPE  # the BFFHQ expert has no padding: >= 42 pixels
    model = create_backbone(name, shape)
    out = model(torch.rand(4, *shape))
    assert out.shape == (4, model.num_features)


@pytest.mark.parametrize("depth", [1, 2, 3, 5, 8])
def test_mlp_depth_counts_linear_layers_with_the_head(depth):
    model = TwoExpertModel(create_backbone("mlp", SHAPE, depth=depth), create_backbone("mlp", SHAPE, depth=2), 10)
    linears = [m for m in model.deep.modules() if isinstance(m, nn.Linear)]
    assert len(linears) + 1 == depth  # + the shared head


def test_bad_depth_is_a_config_error():
    with pytest.raises(ConfigError, match="depth"):
        create_backbone("mlp", SHAPE, depth=0)
    linear = create_backbone("mlp", SHAPE, depth=1)  # the head alone: a linear model on the pixels
    assert linear.num_features == 3 * 32 * 32 and not any(isinstance(m, nn.Linear) for m in linear.modules())
    with pytest.raises(ConfigError, match="unknown backbone"):
        create_backbone("nope", SHAPE)


# the mlp preset's specs; methods are built from them as run.py builds them (Method.build)
SPECS = {
    "deep": {"name": "mlp", "depth": 5},
    "shallow": {"name": "mlp", "depth": 3},
    "target": {"name": "mlp", "depth": 5},
}
ADAM = functools.partial(torch.optim.Adam)


def _ctx() -> BuildContext:
    y = torch.arange(16) % 10
    return BuildContext(SHAPE, 10, 10, SPECS, Split(torch.rand(16, *SHAPE), y, y), ADAM, lr=1e-2)


def _stage1(seed: int = 0) -> DeNetDMStage1:
    torch.manual_seed(seed)
    return DeNetDMStage1.build(_ctx(), None)


def _two_expert(seed: int = 0) -> TwoExpertModel:
    return _stage1(seed).model


def test_product_of_experts_logits_are_the_sum_of_expert_logits():
    model = _two_expert()
    x = torch.rand(8, *SHAPE)
    out = model.experts(x)
    assert set(out) == {"shallow", "deep", "poe"}
    assert all(v.shape == (8, 10) for v in out.values())
    # a linear head on summed features: poe = deep + shallow - head bias
    assert torch.allclose(out["poe"], out["deep"] + out["shallow"] - model.head.bias, atol=1e-5)
    assert torch.allclose(model(x), out["poe"])
    # the softmax of the sum is the normalised product of the experts' softmaxes
    prod = F.softmax(out["deep"], 1) * F.softmax(out["shallow"], 1) / F.softmax(model.head.bias, 0)
    assert torch.allclose(F.softmax(out["poe"], 1), prod / prod.sum(1, keepdim=True), atol=1e-5)


def test_stage1_update_trains_all_three_parts():
    method = _stage1()
    model = method.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = method.update(torch.rand(16, *SHAPE), torch.randint(0, 10, (16,)), torch.arange(16))
    assert set(out) == {"loss"} and not out["loss"].requires_grad
    changed = {k.split(".")[0] for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"deep", "shallow", "head"}


def _stage2(**kw) -> DeNetDMStage2:
    return DeNetDMStage2.build(_ctx(), _stage1(), **method_hparams("denetdm", "stage2", **kw))


def test_stage2_head_starts_from_stage1_and_only_the_target_moves():
    method = _stage2()
    assert torch.equal(method.target.head.weight, method.stage1.head.weight)
    assert method.target.head.weight.data_ptr() != method.stage1.head.weight.data_ptr()
    frozen = {k: v.clone() for k, v in method.stage1.state_dict().items()}
    method.train()
    assert not method.stage1.training and method.target.training  # frozen experts stay in eval mode
    method.update(torch.rand(16, *SHAPE), torch.randint(0, 10, (16,)), torch.arange(16))
    assert all(torch.equal(v, frozen[k]) for k, v in method.stage1.state_dict().items())
    assert set(method.predict(torch.rand(2, *SHAPE))) == {"target"}


def _bn_stage2(frozen_bn: str) -> DeNetDMStage2:
    """Stage 2 over CNN experts, whose BatchNorm statistics can move."""
    specs = {
        "deep": {"name": "resnet_cifar", "depth": 8},
        "shallow": {"name": "cnn", "depth": 3},
        "target": {"name": "cnn", "depth": 3},
    }
    y = torch.arange(16) % 10
    ctx = BuildContext(SHAPE, 10, 10, specs, Split(torch.rand(16, *SHAPE), y, y), ADAM, lr=1e-2)
    torch.manual_seed(0)
    return DeNetDMStage2.build(
        ctx, DeNetDMStage1.build(ctx, None), **method_hparams("denetdm", "stage2", frozen_bn=frozen_bn)
    )


def _bn_stats(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k}


@pytest.mark.parametrize("frozen_bn", ["eval", "train"])
def test_frozen_deep_expert_batchnorm_eval_by_default_train_as_the_reference(frozen_bn):
    method = _bn_stage2(frozen_bn)
    deep, shallow = _bn_stats(method.stage1.deep), _bn_stats(method.stage1.shallow)
    method.prepare(Split(torch.rand(16, *SHAPE), torch.arange(16) % 10, torch.arange(16) % 10), augmented=False)
    assert (method.frozen_deep is None) == (frozen_bn == "train")  # batch statistics: nothing can be cached
    method.train()
    assert method.stage1.deep.training == (frozen_bn == "train") and not method.stage1.shallow.training
    method.update(torch.rand(16, *SHAPE), torch.arange(16) % 10, torch.arange(16))
    moved = [not torch.equal(v, deep[k]) for k, v in _bn_stats(method.stage1.deep).items()]
    assert any(moved) == (frozen_bn == "train")  # the reference's drift, only when asked for
    assert all(torch.equal(v, shallow[k]) for k, v in _bn_stats(method.stage1.shallow).items())  # the teacher
    assert all(not p.requires_grad for p in method.stage1.parameters())
    method.eval()
    assert not method.stage1.deep.training


def test_frozen_bn_takes_eval_or_train():
    with pytest.raises(ConfigError, match="method.frozen_bn must be eval or train"):
        DeNetDMStage2.check("stage2", {}, **method_hparams("denetdm", "stage2", frozen_bn="frozen"))


def test_stage2_loss_matches_the_protocol_formula_and_the_cache():
    x, y = torch.rand(32, *SHAPE), torch.randint(0, 10, (32,))
    w_poe, w_dist, t = 0.7, 0.3, 2.0
    m = _stage2(poe_weight=w_poe, dist_weight=w_dist, temperature=t)
    with torch.no_grad():
        fb, fs = m.stage1.features(x)
        teacher = m.stage1.head(fs)
        ft = m.target.features(x)
        poe = F.cross_entropy(m.target.head(fb + ft), y)
        dist = -(F.softmax(teacher / t, 1) * F.log_softmax(m.target.head(ft) / t, 1)).sum() / 32 * t * t
    out = m.update(x, y, torch.arange(32))
    assert out["loss_poe"].item() == pytest.approx(poe.item(), rel=1e-5)
    assert out["loss_dist"].item() == pytest.approx(dist.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(w_poe * poe.item() + w_dist * dist.item(), rel=1e-5)
    # precomputed frozen outputs give the same step as computing them per batch
    a, b = _stage2(), _stage2()
    b.prepare(Split(x, y, y), augmented=False)
    la = a.update(x[:16], y[:16], torch.arange(16))["loss"]
    lb = b.update(x[:16], y[:16], torch.arange(16))["loss"]
    assert la.item() == pytest.approx(lb.item(), rel=1e-5)


@pytest.mark.parametrize("depth,blocks", [(8, 1), (20, 3), (56, 9)])
def test_cifar_resnet_depth_is_6n_plus_2(depth, blocks):
    model = create_backbone("resnet_cifar", SHAPE, depth=depth)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 6 * blocks + 1 and model.num_features == 64
    with pytest.raises(ConfigError, match="6n\\+2"):
        create_backbone("resnet_cifar", SHAPE, depth=depth + 1)


def test_cifar_resnet_init_is_the_references():
    # the reference's ResNet-20 (kadarsh22/DeNetDM module/resnet.py, as LfF's): kaiming_normal_ with torch's
    # defaults, std sqrt(2 / fan_in); fan_out would give the 3-channel stem std 0.118 instead of 0.272
    torch.manual_seed(0)
    convs = [m for m in create_backbone("resnet_cifar", SHAPE, depth=56).modules() if isinstance(m, nn.Conv2d)]
    for conv in convs:
        fan_in = conv.weight[0].numel()
        assert conv.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.1), conv


def test_reference_cnn_presets():
    cnn3 = create_backbone("cnn", SHAPE)  # 5x5 convs without padding: 32 -> 1x1x64
    assert cnn3.num_features == 64 and sum(isinstance(m, nn.Conv2d) for m in cnn3.modules()) == 3
    cnn4 = create_backbone("cnn_bffhq", (3, 64, 64))
    assert cnn4.num_features == 512 and sum(isinstance(m, nn.Conv2d) for m in cnn4.modules()) == 4
    deeper = create_backbone("cnn", SHAPE, depth=4, padding=2)
    assert sum(isinstance(m, nn.Conv2d) for m in deeper.modules()) == 4
    with pytest.raises(ConfigError, match="shrinks"):
        create_backbone("cnn", SHAPE, depth=5)


def _reference_bffhq_shallow() -> nn.Sequential:
    """The reference's BFFHQ shallow expert as its module/model.py writes it (facts: layers and their order)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=7),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(64, 128, kernel_size=3),
        nn.BatchNorm2d(128),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(128, 512, kernel_size=3),
        nn.MaxPool2d(2, 2),
        nn.BatchNorm2d(512),
        nn.ReLU(),
        nn.Conv2d(512, 512, kernel_size=3),
        nn.BatchNorm2d(512),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
    )


def _layer_list(model: nn.Module) -> list[tuple]:
    out = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            out.append(("conv", m.in_channels, m.out_channels, m.kernel_size, m.padding, m.stride))
        elif isinstance(m, nn.BatchNorm2d):
            out.append(("bn", m.num_features))
        elif isinstance(m, (nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Flatten)):
            out.append((type(m).__name__,))
    return out


@pytest.mark.slow  # a 224 x 224 forward pass
def test_bffhq_shallow_expert_is_the_reference_one():
    ours, ref = create_backbone("cnn_bffhq", (3, 224, 224)), _reference_bffhq_shallow()
    assert _layer_list(ours) == _layer_list(ref)  # 7x7 first, no padding, the third pool before its batch norm
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters()) == 3_035_904
    x = torch.zeros(2, 3, 224, 224)
    assert ours.eval()(x).shape == ref.eval()(x).shape == (2, 512) and ours.num_features == 512
    pre_pool = nn.Sequential(*list(ours.body)[:-2])  # before the global average: 224 -> 218 -> 109 -> ... -> 23
    assert pre_pool(x).shape == (2, 512, 23, 23)
    with pytest.raises(ConfigError, match="shrinks"):  # no padding: 4 layers need images of at least 42 pixels
        create_backbone("cnn_bffhq", (3, 41, 41))
    assert create_backbone("cnn_bffhq", (3, 42, 42)).num_features == 512


def test_pretrained_without_weights_or_network_fails_at_once(monkeypatch, tmp_path):
    import socket
    import time

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty weights cache

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    t0 = time.time()
    with pytest.raises(ConfigError, match="pretrained resnet18 weights are not in .* pretrained=false"):
        create_backbone("resnet", SHAPE, depth=18, pretrained=True)
    assert time.time() - t0 < 5


def test_experts_of_different_widths_share_a_projected_head():
    deep = create_backbone("resnet", SHAPE, depth=18)  # 512-d
    shallow = create_backbone("cnn", SHAPE)  # 64-d
    model = TwoExpertModel(deep, shallow, 10)
    assert model.head.in_features == 512 and isinstance(model.shallow_proj.proj, nn.Linear)
    out = model.experts(torch.rand(2, *SHAPE))
    assert all(v.shape == (2, 10) for v in out.values())
    # the reference's CIFAR target: ResNet-18 + Linear(512, 64) into a 64-d stage-1 head
    small = TwoExpertModel(create_backbone("resnet_cifar", SHAPE), create_backbone("cnn", SHAPE), 10)
    target = TargetModel(create_backbone("resnet", SHAPE, depth=18), small.head)
    assert (target.proj.proj.in_features, target.proj.proj.out_features) == (512, 64)
    assert target(torch.rand(2, *SHAPE)).shape == (2, 10)


def test_channels_last_is_decided_from_the_backbone_specs():
    conv, mlp = {"name": "resnet_cifar"}, {"name": "mlp"}
    assert uses_channels_last([mlp, conv], SHAPE) and not uses_channels_last([mlp, mlp], SHAPE)
    assert not uses_channels_last([conv], (784,))  # no image dimensions


def test_mlp_input_scale_multiplies_the_input_and_is_absent_by_default():
    torch.manual_seed(0)
    plain = create_backbone("mlp", SHAPE, depth=3)
    torch.manual_seed(0)
    scaled = create_backbone("mlp", SHAPE, depth=3, input_scale=1 / 255)
    assert list(plain.state_dict()) == ["1.weight", "1.bias", "3.weight", "3.bias"]  # default: same layout as before
    x = torch.rand(4, *SHAPE)
    assert torch.allclose(scaled(x), plain(x / 255), atol=1e-6)
    with pytest.raises(ConfigError, match="input_scale"):
        create_backbone("mlp", SHAPE, input_scale=0)


def test_mlp_remedies_he_init_and_layernorm_and_their_bad_values():
    from conftest import compose_cfg

    torch.manual_seed(0)
    he = create_backbone("mlp", SHAPE, depth=8, init="kaiming")
    linears = [m for m in he if isinstance(m, nn.Linear)]
    assert all(m.bias.abs().max().item() == 0 for m in linears)
    assert linears[1].weight.detach().std().item() == pytest.approx((2 / 100) ** 0.5, rel=0.05)  # fan-in 100, ReLU gain
    normed = create_backbone("mlp", SHAPE, depth=4, norm="layer")
    assert [type(m).__name__ for m in normed][1:4] == ["Linear", "LayerNorm", "ReLU"]
    with pytest.raises(ConfigError, match="mlp init"):
        create_backbone("mlp", SHAPE, init="xavier")
    with pytest.raises(ConfigError, match="mlp norm"):
        create_backbone("mlp", SHAPE, norm="batch")
    # the remedy group sets both experts; without it, the specs have neither key (stored fingerprints hold)
    model = compose_cfg(["experiment=paper_cmnist", "remedy=layernorm"]).model
    assert model.shallow.norm == model.deep.norm == "layer" and "norm" not in model.target
    assert "init" not in compose_cfg(["experiment=paper_cmnist"]).model.deep


@pytest.mark.parametrize(
    "name, kwargs, words",
    [
        ("mlp", {"depth": 2**31}, "at most 2000"),
        ("resnet_cifar", {"depth": 6 * 10**6 + 2}, "at most 2000"),
        ("mlp", {"width": 65536}, "parameters"),
        ("cnn", {"channels": [100000]}, "parameters"),
        ("mlp", {"width": 2**31}, "more than torch can index"),
        ("mlp", {"width": 2**63}, "past what torch can index"),
    ],
)
def test_models_too_large_to_build_are_one_error_before_any_memory_is_taken(name, kwargs, words):
    # found by tests/test_fuzz.py: model.deep.depth=2147483648 built layers until the machine swapped
    with pytest.raises(ConfigError, match=words):
        create_backbone(name, (3, 32, 32), **kwargs)
