"""The baselines against their formulas on tiny batches, every method x dataset preset on tiny data, and the
selection protocols on a synthetic history (docs/protocols.md §2, §8)."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from denetdm.data.splits import Split
from denetdm.errors import ConfigError
from denetdm.methods import DFA, ERM, JTT, LC, BuildContext, GroupDRO, JTTIdentify, LfF
from denetdm.methods.jtt import errors_of
from denetdm.methods.lc import group_partners, table_update
from denetdm.methods.lff import class_max, ema_update, gce
from denetdm.selection import PROTOCOLS, protocol
from denetdm.training.loop import Trainer
from denetdm.training.phases import Schedule
from denetdm.training.pipeline import train

from conftest import CONF, TINY, compose_cfg, method_hparams, read_results

SHAPE = (3, 8, 8)
SPECS = {part: {"name": "mlp", "depth": 3, "width": 16} for part in ("shallow", "deep", "target")}
METHODS = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))


def _ctx(n: int = 32, lr: float = 1e-2) -> BuildContext:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (n,), generator=g)
    b = torch.where(torch.rand(n, generator=g) < 0.8, y, torch.randint(0, 4, (n,), generator=g))
    train = Split(torch.rand(n, *SHAPE, generator=g), y, b)
    return BuildContext(SHAPE, 4, 4, SPECS, train, functools.partial(torch.optim.SGD), lr=lr)


def test_gce_value_and_gradient_follow_the_formula():
    logits = torch.randn(6, 4, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    q = 0.7
    p_y = F.softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
    value = gce(logits, y, q)
    assert torch.allclose(value, F.cross_entropy(logits, y, reduction="none") * p_y.detach() ** q * q)
    # its gradient is q times the gradient of the textbook GCE (1 - p_y^q) / q
    (g_ref,) = torch.autograd.grad(value.sum(), logits)
    (g_gce,) = torch.autograd.grad(((1 - p_y**q) / q).sum(), logits)
    assert torch.allclose(g_ref, q * g_gce, atol=1e-6)


def test_lff_moving_averages_and_weights():
    ema, seen = torch.zeros(4), torch.zeros(4, dtype=torch.bool)
    ema_update(ema, seen, torch.tensor([0, 2]), torch.tensor([1.0, 3.0]), alpha=0.7)
    assert ema.tolist() == [1.0, 0.0, 3.0, 0.0]  # the first visit stores the loss itself
    ema_update(ema, seen, torch.tensor([0, 1]), torch.tensor([2.0, 5.0]), alpha=0.7)
    assert ema.tolist() == pytest.approx([0.7 * 1 + 0.3 * 2, 5.0, 3.0, 0.0])
    assert class_max(torch.tensor([1.0, 4.0, 2.0, 3.0]), torch.tensor([0, 0, 1, 1]), 3).tolist() == [4.0, 3.0, 0.0]
    method = LfF.build(_ctx(), None, **method_hparams("lff"))
    idx = torch.tensor([0, 1, 2])
    y = method.labels[idx]
    ce_b, ce_d = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([1.0, 0.5, 0.5])
    w = method.weights(ce_b, ce_d, y, idx)
    max_b = class_max(method.ema_b, method.labels, 4)[y]
    max_d = class_max(method.ema_d, method.labels, 4)[y]
    lb, ld = ce_b / max_b, ce_d / max_d
    assert torch.allclose(w, lb / (lb + ld + 1e-8))
    assert method.seen[idx].all() and not method.seen[3:].any()


def test_lff_step_trains_both_networks_and_the_debiased_one_is_the_result():
    method = LfF.build(_ctx(), None, **method_hparams("lff"))
    before = {k: v.clone() for k, v in method.state_dict().items()}
    x, y = method.labels.new_zeros(0), None
    ctx = _ctx()
    out = method.update(ctx.train.x[:8], ctx.train.y[:8], torch.arange(8))
    assert {"loss", "loss_biased", "loss_debiased", "weight"} <= set(out)
    assert out["loss"].item() == pytest.approx(out["loss_biased"].item() + out["loss_debiased"].item(), rel=1e-5)
    changed = {k.split(".")[0] for k, v in method.state_dict().items() if not torch.equal(v, before[k])}
    assert {"biased", "debiased", "ema_b", "ema_d", "seen"} <= changed
    assert set(method.predict(ctx.train.x[:2])) == {"target", "biased"}
    del x, y


def _identified(ctx: BuildContext, epochs: int = 2) -> tuple[JTTIdentify, torch.Tensor]:
    """An identification model trained `epochs` epochs in batches of 8, and the errors its training-mode outputs
    made on each sample during the last epoch, computed beside it (the reference's output_train_epoch_T)."""
    first = JTTIdentify.build(ctx, None, **method_hparams("jtt", "jtt_id"))
    expected = torch.zeros(len(ctx.train), dtype=torch.bool)
    gen = torch.Generator().manual_seed(1)
    for _ in range(epochs):
        for x, y, idx in ctx.train.batches(8, gen):
            with torch.no_grad():
                expected[idx] = first.model(x).argmax(1) != y  # before this batch's step, as the reference logs
            first.update(x, y, idx)
    return first, expected


def test_jtt_error_set_is_the_last_epochs_online_training_predictions():
    ctx = _ctx(lr=0.5)
    first, expected = _identified(ctx)
    assert torch.equal(first.wrong, expected) and expected.any() and not expected.all()
    # `error_set: eval` re-predicts the training split with the trained model instead
    assert torch.equal(
        JTT.build(ctx, first, **method_hparams("jtt", error_set="eval")).weights, torch.ones(len(ctx.train))
    )
    assert torch.equal(
        errors_of(first, ctx.train.x, ctx.train.y), first.predict(ctx.train.x)["target"].argmax(1) != ctx.train.y
    )
    with pytest.raises(TypeError):
        JTT.build(ctx, None, **method_hparams("jtt"))


def test_jtt_upsamples_the_error_set_as_the_reference_does():
    ctx = _ctx(lr=0.5)
    first, wrong = _identified(ctx)
    n, errors, lam = len(ctx.train), int(wrong.sum()), 3
    method = JTT.build(ctx, first, **method_hparams("jtt", upweight=lam))
    order = method.epoch_order(n, torch.Generator().manual_seed(0))
    # the training set plus lam copies of the error set: epochs of N + lam |E|, each error counted lam + 1 times
    assert len(order) == n + lam * errors
    assert torch.equal(torch.bincount(order, minlength=n), 1 + lam * wrong.long())
    assert torch.equal(method.weights, torch.ones(n))  # plain mean cross-entropy over the batch
    # weighting=loss: epochs of N, the same total weight lam + 1 as a loss weight, normalised by the batch's
    by_loss = JTT.build(ctx, first, **method_hparams("jtt", upweight=lam, weighting="loss"))
    assert torch.equal(by_loss.weights, torch.bincount(order, minlength=n).float())
    assert sorted(by_loss.epoch_order(n, torch.Generator().manual_seed(0)).tolist()) == list(range(n))
    idx = torch.arange(8)
    x, y = ctx.train.x[idx], ctx.train.y[idx]
    with torch.no_grad():
        ce = F.cross_entropy(by_loss.model(x), y, reduction="none")
    w = by_loss.weights[idx]
    assert by_loss.update(x, y, idx)["loss"].item() == pytest.approx(((w * ce).sum() / w.sum()).item(), rel=1e-5)


def test_groupdro_samples_groups_as_the_references_weighted_sampler():
    ctx = _ctx(n=64)
    method = GroupDRO.build(ctx, None, **method_hparams("groupdro"))
    groups = ctx.train.y * 4 + ctx.train.b
    counts = (torch.arange(16).unsqueeze(1) == groups).sum(1).float()  # group_DRO's DRODataset._group_counts
    weights = (len(groups) / counts)[groups]  # its get_loader(reweight_groups=True)
    assert torch.equal(method.draw_weights, weights.double())
    reference = torch.utils.data.WeightedRandomSampler(
        weights, len(groups), replacement=True, generator=torch.Generator().manual_seed(5)
    )
    ours = method.epoch_order(len(groups), torch.Generator().manual_seed(5))
    assert ours.tolist() == list(reference)
    # groups equally likely: over many epochs the rarest group is drawn about as often as the largest
    draws = torch.cat([method.epoch_order(64, torch.Generator().manual_seed(s)) for s in range(200)])
    per_group = torch.bincount(groups[draws], minlength=16)[counts > 0].double()
    assert per_group.min() > 0.7 * per_group.mean()
    shuffled = GroupDRO.build(ctx, None, **method_hparams("groupdro", sampler="shuffle")).epoch_order(
        64, torch.Generator().manual_seed(5)
    )
    assert shuffled.tolist() == torch.randperm(64, generator=torch.Generator().manual_seed(5)).tolist()


def test_groupdro_weight_update():
    ctx = _ctx()
    method = GroupDRO.build(ctx, None, **method_hparams("groupdro", eta=0.5))
    groups = ctx.train.y * 4 + ctx.train.b
    assert torch.equal(method.groups, groups) and torch.allclose(method.q, torch.full((16,), 1 / 16))
    idx = torch.arange(12)
    x, y = ctx.train.x[idx], ctx.train.y[idx]
    with torch.no_grad():
        ce = F.cross_entropy(method.model(x), y, reduction="none")
    loss_g = torch.zeros(16).index_add(0, groups[idx], ce) / torch.zeros(16).index_add(
        0, groups[idx], torch.ones(12)
    ).clamp(min=1)
    q = torch.full((16,), 1 / 16) * torch.exp(0.5 * loss_g)
    q = q / q.sum()
    out = method.update(x, y, idx)
    assert torch.allclose(method.q, q, atol=1e-6)
    assert out["loss"].item() == pytest.approx((loss_g @ q).item(), rel=1e-5)
    absent = torch.ones(16, dtype=torch.bool)
    absent[groups[idx]] = False
    assert (method.q[absent] < 1 / 16).all()  # groups without samples in the batch lose weight


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("preset", ["mlp", pytest.param("cnn3_resnet20", marks=pytest.mark.slow)])
def test_every_method_builds_and_trains_one_epoch_on_every_preset(method, preset, tmp_path):
    overrides = [
        *TINY,
        f"method={method}",
        f"backbone_depth={preset}",
        "dataset.train_size=300",
        "dataset.test_size=100",
        "dataset.val_size=50",
        "experts.epochs=1",
        "target.epochs=2",
    ]
    if preset != "mlp":  # coloured shapes as 3x28x28 images: a CNN of one conv layer and ResNet-8 fit them
        overrides += ["model.shallow.depth=1", "model.deep.depth=8", "experts.batch_size=128", "target.batch_size=128"]
    if method == "jtt":
        overrides.append("method.id_epochs=1")
    results = train(compose_cfg(overrides), tmp_path / "run")
    assert results["method"] == method and 0 <= results["test/acc_unbiased"] <= 1
    assert math.isfinite(results["objective"]) and results["objective_key"] == "val/acc_unbiased"
    assert results["uses_bias_labels"] == (method == "groupdro")
    if preset == "mlp":  # stage=eval rebuilds the final phase from its checkpoint and gets the same numbers
        final = results["config"]["method"]["final"]["phase"]
        ckpt = tmp_path / "run" / "checkpoints" / f"{final}_selected.pt"
        evaluated = train(compose_cfg([*overrides, "stage=eval", f"stage.ckpt={ckpt}"]), tmp_path / "eval")
        assert evaluated["test/acc_unbiased"] == pytest.approx(results["test/acc_unbiased"])


def _history(values: dict[str, list[float]]) -> list[dict]:
    """Per-epoch metrics of one head: keys are `<split>/<metric>`."""
    epochs = len(next(iter(values.values())))
    return [{f"s/target/{k}": v[e] for k, v in values.items()} for e in range(epochs)]


@pytest.mark.parametrize(
    "name,best",
    [("val", 1), ("oracle", 2), ("test", 2), ("val_nolabels", 0), ("val_biased_nolabels", 3), ("last", 3)],
)
def test_each_protocol_picks_its_documented_epoch(name, best):
    history = _history(
        {
            "val/acc_unbiased": [0.2, 0.9, 0.5, 0.1],
            "val/acc": [0.8, 0.3, 0.4, 0.2],
            "test/acc_unbiased": [0.1, 0.2, 0.95, 0.3],
            "val_biased/acc": [0.1, 0.2, 0.3, 0.99],
        }
    )
    key = protocol(name).key("s", "target/acc_unbiased", "acc")
    scores = [len(history) if key is None else h[key] for h in history]
    chosen = len(history) - 1 if key is None else max(range(len(history)), key=scores.__getitem__)
    assert chosen == best
    assert protocol(name).bias_labels == (
        PROTOCOLS[protocol(name).name].split in ("val", "test") and "nolabels" not in name and name != "last"
    )


def test_label_free_protocols_never_read_a_bias_labelled_metric():
    for proto in PROTOCOLS.values():
        key = proto.key("stage1", "shallow/acc_conflicting", "acc_worst_class")
        if not proto.bias_labels and key is not None:
            assert key.endswith("/acc_worst_class")


def test_the_trainer_selects_by_the_protocol(tmp_path):
    ctx = _ctx(64)
    y = ctx.train.y
    from denetdm.data.splits import BiasedData

    data = BiasedData("toy", ctx.train, ctx.train, ctx.train, 4, 4, val_biased=ctx.train)
    for name in PROTOCOLS:
        torch.manual_seed(0)
        trainer = Trainer(tmp_path / name, protocol=protocol(name), progress=False)
        result = trainer.fit(
            "erm", ERM.build(ctx, None, **method_hparams("erm")), data, Schedule(3, 16, "target/acc_unbiased", 0), {}
        )
        history = trainer.recorder.records.read()
        key = trainer.recorder.selection_key("erm", Schedule(3, 16, "target/acc_unbiased", 0))
        want = 3 if key is None else 1 + max(range(3), key=lambda e: (history[e][key], -e))
        assert result.selected_epoch == want, name
    del y


@pytest.mark.parametrize(
    "overrides,words",
    [
        (["method=erm", "method.arch=middle"], ["method.arch", "middle"]),
        (["method=groupdro", "method.eta=abc"], ["method.eta", "abc"]),
        (["method=lff", "method.q=2"], ["method.q"]),
        (["method=dfa", "method.lambda_swap=-1"], ["method.lambda_swap"]),
        (["method=dfa", "method.swap_after=soon"], ["method.swap_after", "soon"]),
        (["method=lc", "method.tau=0"], ["method.tau"]),
        (["method=lc", "method.ema_alpha=1.5"], ["method.ema_alpha"]),
        (["method=lc", "method.normalize_prior=sometimes"], ["method.normalize_prior", "sometimes"]),
        (["method=lc", "method.biased_lr_factor=0"], ["method.biased_lr_factor"]),
        (["method=jtt", "method.id_epochs=3", "target.epochs=3"], ["id_epochs", "3"]),
        (["method=jtt", "method.upweight=0.5"], ["method.upweight"]),
        (["method=jtt", "method.weighting=twice"], ["method.weighting", "twice"]),
        (["method=jtt", "method.error_set=oracle"], ["method.error_set", "oracle"]),
        (["method=groupdro", "method.sampler=uniform"], ["method.sampler", "uniform"]),
        (["selection=val_biased_nolabels"], ["dataset.biased_val_size"]),
        (["selection=best"], ["selection", "val_nolabels"]),
        (["selection_metric=acc_unbiased"], ["selection_metric"]),
        (["objective=test/nope"], ["objective"]),
        (["method=erm", "stage=stage2"], ["phases", "erm"]),
        (["dataset.biased_val_size=-3"], ["biased_val_size"]),
    ],
)
def test_bad_method_and_protocol_values_are_one_clear_error(overrides, words, tmp_path):
    with pytest.raises(ConfigError) as info:
        train(compose_cfg([*TINY, *overrides]), tmp_path / "run")
    for w in words:
        assert w in str(info.value), str(info.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_label_free_protocol_end_to_end_reads_no_bias_labelled_objective(tmp_path):
    args = [*TINY, "method=erm", "selection=val_biased_nolabels", "dataset.biased_val_size=100"]
    results = train(compose_cfg(args), tmp_path / "run")
    assert results["objective_key"] == "val_biased/acc" and results["selection_bias_labels"] is False
    assert results["objective"] == results["val_biased/acc"]
    assert read_results(tmp_path / "run")["selection"] == "val_biased_nolabels"


@pytest.mark.slow
def test_bench_times_every_phase_of_a_method(tmp_path):
    import bench

    from denetdm.data.synthetic import SyntheticShapes

    data = (
        SyntheticShapes(
            name="synthetic",
            train_size=300,
            test_size=100,
            severity=4,
            conflict_pct=5,
            val_size=50,
            seed=0,
            cache_dir=str(tmp_path),
        )
        .load()
        .to("cpu")
    )
    args = type("Args", (), {"epochs": 1, "device": "cpu"})()
    rows = bench._time_method("jtt", data, args)
    assert [r[0] for r in rows] == ["jtt_id", "jtt"] and all(r[1] > 0 for r in rows)
    assert rows[1][2] == 100  # the paper schedule's epochs of the final phase (Colored MNIST)


def test_a_collapsed_deep_expert_is_a_label_free_verdict_in_the_results(tmp_path, monkeypatch, caplog):
    from denetdm.methods.denetdm import DeNetDMStage1

    stage1 = DeNetDMStage1.build(_ctx(), None)
    shallow = {"stage1/shallow/val/pred_entropy": 0.96}
    healthy = stage1.diagnose("stage1", shallow | {"stage1/deep/val/pred_entropy": 0.95}, 100)
    assert healthy == {"stage1/collapse_signal": pytest.approx(0.95 / 0.96), "stage1/collapsed": False}
    assert stage1.diagnose("stage1", {"stage1/deep/val/acc": 0.1}, 100) == {}  # nothing to read: nothing said
    collapsed = stage1.diagnose("stage1", shallow | {"stage1/deep/val/pred_entropy": 0.45}, 100)
    assert collapsed["stage1/collapsed"] is True and collapsed["stage1/collapse_signal"] == pytest.approx(0.45 / 0.96)
    (warning,) = collapsed["warnings"]
    assert warning.startswith("stage1: the deep expert predicts few classes (pred_entropy 0.45 on val")
    # too short to judge (a debug run): no verdict, and it says why
    short = stage1.diagnose("stage1", shallow | {"stage1/deep/val/pred_entropy": 0.45}, 1)
    assert short["stage1/collapsed"] is None and "warnings" not in short
    assert short["stage1/collapse_note"] == "not judged: 1 epoch(s), fewer than 3"
    # through runs: the verdict and the signal in results.json, a collapse's warning in the log too
    train(compose_cfg(TINY), tmp_path / "short")  # 2 epochs
    assert read_results(tmp_path / "short")["stage1/collapsed"] is None
    train(compose_cfg([*TINY, "experts.epochs=3"]), tmp_path / "judged")
    judged = read_results(tmp_path / "judged")
    assert isinstance(judged["stage1/collapsed"], bool) and judged["stage1/collapse_signal"] > 0
    monkeypatch.setattr(DeNetDMStage1, "diagnose", lambda self, phase, m, epochs: {"warnings": [f"{phase}: x"]})
    train(compose_cfg(TINY), tmp_path / "warned")
    assert read_results(tmp_path / "warned")["warnings"] == ["stage1: x"]
    assert "stage1: x" in caplog.text


@pytest.mark.parametrize("method", METHODS)
def test_every_phase_predicts_exactly_the_heads_it_declares(method):
    # `heads` is what `<schedule>.select` is checked against before training: it must be what `predict` gives
    from denetdm.training.plan import plan

    p = plan(compose_cfg([*TINY, f"method={method}", "target.epochs=3"]), "/nonexistent")
    previous, ctx = None, _ctx()
    for name, phase in p.phases.items():
        previous = phase.build(ctx, previous)
        assert tuple(previous.eval().predict(ctx.train.x[:2])) == phase.cls.heads, name


def test_the_method_contract_pages_example_trains_and_checks_its_hyperparameter(tmp_path, monkeypatch):
    import re

    from denetdm.errors import ConfigError

    page = (CONF.parent / "docs" / "methods.md").read_text()
    code, conf = re.findall(r"```python\n(.*?)```", page, re.S)[0], re.findall(r"```yaml\n(.*?)```", page, re.S)[0]
    (tmp_path / "smooth_example.py").write_text(code)
    (tmp_path / "method").mkdir()
    target = "denetdm.methods.smooth.SmoothERM"
    (tmp_path / "method" / "smooth_erm.yaml").write_text(conf.replace(target, "smooth_example.SmoothERM"))
    monkeypatch.syspath_prepend(str(tmp_path))
    args = [*TINY, "method=smooth_erm", f"hydra.searchpath=[file://{tmp_path}]"]
    results = train(compose_cfg(args), tmp_path / "run")
    assert results["method"] == "smooth_erm" and 0 <= results["test/acc_unbiased"] <= 1
    with pytest.raises(ConfigError, match="method.smoothing"):
        train(compose_cfg([*args, "method.smoothing=2"]), tmp_path / "bad")


def _dfa_by_hand(method: DFA, x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    """DFA's loss of one batch on a fresh method (every sample seen for the first time), written out in the order
    of its authors' train_ours: features, both sides' logits, the moving averages (a first visit stores the loss),
    the class-wise maxima over the whole training set, the weights, then L_dis and, with `perm`, L_swap."""
    hp, q = method.hp, method.hp["q"]
    z_l, z_b = method.intrinsic(x), method.bias(x)
    pred_conflict = method.head_i(torch.cat((z_l, z_b.detach()), 1))
    pred_align = method.head_b(torch.cat((z_l.detach(), z_b), 1))
    ce_conflict = F.cross_entropy(pred_conflict, y, reduction="none")
    ce_align = F.cross_entropy(pred_align, y, reduction="none")
    ema_d, ema_b = torch.zeros(len(method.labels)), torch.zeros(len(method.labels))
    ema_d[: len(y)], ema_b[: len(y)] = ce_conflict.detach(), ce_align.detach()  # the batch is samples 0..B-1
    max_d = torch.stack([ema_d[method.labels == c].max() for c in range(method.num_classes)])
    max_b = torch.stack([ema_b[method.labels == c].max() for c in range(method.num_classes)])
    d, b = ce_conflict.detach() / max_d[y], ce_align.detach() / max_b[y]
    weight = b / (b + d + 1e-8)

    def gce_of(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = F.softmax(logits, 1).gather(1, target[:, None]).squeeze(1).detach()
        return F.cross_entropy(logits, target, reduction="none") * p**q * q

    loss = (ce_conflict * weight).mean() + hp["lambda_dis_align"] * gce_of(pred_align, y).mean()
    if perm is not None:
        mix_conflict = method.head_i(torch.cat((z_l, z_b[perm].detach()), 1))
        mix_align = method.head_b(torch.cat((z_l.detach(), z_b[perm]), 1))
        swap = (F.cross_entropy(mix_conflict, y, reduction="none") * weight).mean()
        loss = loss + hp["lambda_swap"] * (swap + hp["lambda_swap_align"] * gce_of(mix_align, y[perm]).mean())
    return loss


@pytest.mark.parametrize("swapping", [False, True], ids=["before-the-swap", "swapping"])
def test_one_dfa_step_equals_its_authors_loss_written_out_by_hand(swapping):
    import copy

    hparams = method_hparams("dfa") | {"lambda_dis_align": 10.0, "lambda_swap_align": 3.0, "lambda_swap": 0.5}
    method = DFA.build(_ctx(lr=0.1), None, **hparams)
    gen = torch.Generator().manual_seed(3)
    method.hp["swap_after"] = 0.0 if swapping else 5.0
    method.epoch_order(len(method.labels), gen)  # the first epoch: its swap keys drawn
    assert method.swapping is swapping
    x, y, idx = _ctx().train.x[:8], method.labels[:8], torch.arange(8)
    twin = copy.deepcopy(method)
    perm = method.swap_key[idx].argsort() if swapping else None
    expected = _dfa_by_hand(twin, x, y, perm)
    expected.backward()
    out = method.update(x, y, idx)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert (out["loss_swap"].item() > 0) is swapping
    for (name, p), q in zip(method.named_parameters(), twin.parameters(), strict=True):
        step = q.detach() - 0.1 * (q.grad if q.grad is not None else torch.zeros_like(q))
        assert torch.allclose(p, step, atol=1e-6), name  # plain SGD at lr 0.1: each side's gradient as by hand
    assert method.seen[idx].all() and not method.seen[8:].any()


def test_dfa_on_colored_mnist_takes_its_authors_script_values():
    cfg = compose_cfg(["experiment=paper_cmnist", "method=dfa"])
    assert (cfg.target.lr, cfg.target.batch_size, cfg.target.epochs, cfg.target.drop_last) == (0.01, 256, 217, True)
    assert cfg.model.target.input_scale == pytest.approx(1 / 255)  # its MLP's second division by 255
    decay = {"name": "step", "warmup_epochs": 0, "delay_epochs": 43.48, "step_epochs": 43.48, "gamma": 0.5}
    assert dict(cfg.target.lr_schedule) == decay
    assert (cfg.method.lambda_dis_align, cfg.method.lambda_swap_align, cfg.method.lambda_swap) == (10, 10, 1)
    assert compose_cfg(["experiment=paper_cmnist", "method=lff"]).model.target.get("input_scale") is None


def _table_by_hand(table, updated, y, a, v, alpha):
    """The reference's EMA_squre.update (avg_type 'mv'), its loop as written."""
    for i in range(len(y)):
        table[y[i], a[i]] = alpha * table[y[i], a[i]] + (1 - alpha * updated[y[i], a[i]]) * v[i]
        updated[y[i], a[i]] = 1


def test_lc_prior_table_equals_its_authors_loop_sample_by_sample():
    g = torch.Generator().manual_seed(0)
    table, updated = torch.zeros(4, 4, dtype=torch.float64), torch.zeros(4, 4, dtype=torch.float64)
    hand, hand_updated = table.clone(), updated.clone()
    for _ in range(3):  # a cell visited again in a later batch, and several times within one
        y, a = torch.randint(0, 4, (40,), generator=g), torch.randint(0, 4, (40,), generator=g)
        v = torch.rand(40, generator=g, dtype=torch.float64)
        table_update(table, updated, y, a, v, 0.9)
        _table_by_hand(hand, hand_updated, y, a, v, 0.9)
        assert torch.allclose(table, hand, atol=1e-12) and torch.equal(updated, hand_updated)


def _partners_by_hand(y, pseudo, key):
    """Its group mix-up's partner of each sample, with our draw: the floor(key * m)-th minority sample of the class
    (batch order), or where the class has none, the class's samples ordered by key."""
    out = []
    for i in range(len(y)):
        same = [j for j in range(len(y)) if y[j] == y[i]]
        minority = [j for j in same if y[j] != pseudo[j]]
        if minority:
            out.append(minority[int(key[i] * len(minority))])
        else:
            out.append(sorted(same, key=lambda j: key[j])[same.index(i)])
    return out


def test_lc_group_partners_are_same_class_minority_samples_or_a_permutation_of_the_class():
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        y = torch.randint(0, 5, (30,), generator=g)
        pseudo = torch.where(torch.rand(30, generator=g) < 0.8, y, torch.randint(0, 5, (30,), generator=g))
        key = torch.rand(30, generator=g)
        got = group_partners(y, pseudo, key, 5)
        assert got.tolist() == _partners_by_hand(y.tolist(), pseudo.tolist(), key.tolist())
        assert torch.equal(y[got], y)  # a partner always shares the class, so both mix-up labels are y


def _lc_by_hand(method: LC, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """LC's loss of one batch, in the order of its authors' train_ours: the biased logits, the pseudo-labels of
    softmax(logits / tau), the table's update sample by sample, its columns as priors (normalised where asked),
    group mix-up of inputs and priors, then lam LC(y_a) + (1 - lam) LC(y_b) + lambda_dis_align GCE."""
    hp = method.hp
    pred_align = method.biased(x)
    p = F.softmax(pred_align.detach() / hp["tau"], dim=1)
    pseudo = p.argmax(1)
    table, updated = torch.zeros(4, 4), torch.zeros(4, 4)
    _table_by_hand(table, updated, y.tolist(), pseudo.tolist(), p[torch.arange(len(y)), y], hp["ema_alpha"])
    if hp["normalize_prior"]:
        table = table / table.sum(dim=0, keepdim=True)
    delta = table[:, pseudo].T
    partner = torch.tensor(_partners_by_hand(y.tolist(), pseudo.tolist(), method.mix_key[idx].tolist()))
    lam = 1 - 2 * 0.5 + 0.5 * method.lam_key[idx[0]].item()  # no ramp-up: a = 0.5, lam ~ U(0, 0.5)
    pred_conflict = method.debiased(lam * x + (1 - lam) * x[partner])
    prior = lam * delta + (1 - lam) * delta[partner]

    def lc(label: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(pred_conflict + torch.log(prior ** hp["eta"] + 1e-4), label, reduction="none")

    conflict = lam * lc(y) + (1 - lam) * lc(y[partner])
    q = hp["q"]
    p_y = F.softmax(pred_align, 1).gather(1, y[:, None]).squeeze(1).detach()
    align = F.cross_entropy(pred_align, y, reduction="none") * p_y**q * q
    return conflict.mean() + hp["lambda_dis_align"] * align.mean()


@pytest.mark.parametrize("normalize", [False, True], ids=["cmnist-table", "normalised-columns"])
def test_one_lc_step_equals_its_authors_loss_written_out_by_hand(normalize):
    import copy

    hparams = method_hparams("lc") | {"lambda_dis_align": 2.0, "tau": 0.5, "ema_alpha": 0.9}
    method = LC.build(_ctx(lr=0.1), None, **(hparams | {"normalize_prior": normalize}))
    method.epoch_order(method.n, torch.Generator().manual_seed(3))  # the epoch's partner and lam keys
    x, y, idx = _ctx().train.x[:16], _ctx().train.y[:16], torch.arange(16)
    with torch.no_grad():  # sharper biased logits: pseudo-labels that differ within the batch and within a class
        for p in method.biased.parameters():
            p.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    pseudo = method.biased(x).argmax(1)
    assert len(set(pseudo.tolist())) > 2 and (pseudo != y).any()
    twin = copy.deepcopy(method)
    expected = _lc_by_hand(twin, x, y, idx)
    expected.backward()
    out = method.update(x, y, idx)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    for name, p in method.named_parameters():
        q = dict(twin.named_parameters())[name]
        lr = 0.1 * (0.1 if name.startswith("biased.") else 1.0)  # the biased model at a tenth of the rate
        step = q.detach() - lr * (q.grad if q.grad is not None else torch.zeros_like(q))
        assert torch.allclose(p, step, atol=1e-6), name
    assert method.updated.sum() > 0 and method.trained.item() == 16


def test_lc_ramp_up_follows_its_sigmoid_rampup():
    method = LC.build(_ctx(), None, **(method_hparams("lc") | {"rampup_epochs": 2.0}))
    assert method.ramp() == pytest.approx(0.5 * math.exp(-5.0))  # t = 0
    method.trained += method.n  # one epoch trained
    assert method.ramp() == pytest.approx(0.5 * math.exp(-5.0 * 0.25))
    method.trained += 5 * method.n
    assert method.ramp() == 0.5


def test_lc_on_colored_mnist_takes_its_code_defaults():
    cfg = compose_cfg(["experiment=paper_cmnist", "method=lc"])
    assert (cfg.target.lr, cfg.target.batch_size, cfg.target.epochs) == (0.001, 256, 300)
    assert cfg.model.target.input_scale == pytest.approx(1 / 255) and cfg.method.normalize_prior is False
    assert compose_cfg(["experiment=paper_ccifar10", "method=lc"]).method.normalize_prior is True
