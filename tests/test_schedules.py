"""Learning-rate schedules (`<schedule>.lr_schedule`): their values, a resume mid-schedule, stacks."""

import pytest
from test_stacked import _records, _results

from denetdm.errors import ConfigError
from denetdm.fingerprint import fingerprint
from denetdm.training.phases import LRSchedule
from denetdm.training.pipeline import train, train_runs
from denetdm.training.recorder import Recorder

from conftest import TINY, compose_cfg

STEP = ["target.epochs=4", "target.lr_schedule.name=step", "target.lr_schedule.step_epochs=1"]
STEP += ["target.lr_schedule.gamma=0.5", "target.lr_schedule.warmup_epochs=1"]
COSINE = ["target.epochs=4", "target.lr_schedule.name=cosine", "target.lr_schedule.warmup_epochs=0.5"]


def test_the_factor_warms_up_linearly_then_steps_or_follows_the_cosine():
    warm = LRSchedule("none", warmup_epochs=1)
    assert [warm.factor(i / 4, 1 / 4, 3) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    step = LRSchedule("step", step_epochs=2, gamma=0.1)
    assert [step.factor(t, 0.5, 6) for t in (0, 1.5, 2, 3.5, 4)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    delayed = LRSchedule("step", warmup_epochs=1, delay_epochs=2, step_epochs=2, gamma=0.1)  # DFA's decay
    assert [delayed.factor(t, 0.5, 9) for t in (0, 1, 2.5, 3, 4.5, 5, 7)] == pytest.approx([0.5, 1, 1, 1, 1, 0.1, 0.01])
    cosine = LRSchedule("cosine", warmup_epochs=1)
    assert [cosine.factor(t, 0.5, 5) for t in (0, 1, 3, 5)] == pytest.approx([0.5, 1, 0.5, 0])
    assert not LRSchedule().varies and LRSchedule("none", warmup_epochs=0.5).varies


@pytest.mark.parametrize(
    "value,named",
    [
        ("target.lr_schedule.name=linear", "target.lr_schedule.name"),
        ("target.lr_schedule.gamma=1.5", "target.lr_schedule.gamma"),
        ("target.lr_schedule.step_epochs=0", "target.lr_schedule.step_epochs"),
        ("target.lr_schedule.warmup_epochs=9", "target.lr_schedule.warmup_epochs"),
        ("target.lr_schedule.delay_epochs=-1", "target.lr_schedule.delay_epochs"),
        ("+target.lr_schedule.milestones=[2]", "target.lr_schedule must be a mapping"),
    ],
)
def test_a_bad_schedule_is_one_error_before_any_data(value, named, tmp_path):
    with pytest.raises(ConfigError, match=named):
        train(compose_cfg([*TINY, value]), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_constant_schedule_leaves_the_fingerprint_of_runs_made_before_schedules():
    config = {"seed": 0, "target": {"lr": 1e-3}}
    constant = {"name": "none", "warmup_epochs": 0, "step_epochs": 5, "gamma": 0.5}
    assert fingerprint(config | {"target": {"lr": 1e-3, "lr_schedule": constant}}, "stage2") == config
    warm = {"lr": 1e-3, "lr_schedule": constant | {"warmup_epochs": 1}}
    assert fingerprint(config | {"target": warm}, "stage2") != config


def test_a_step_schedule_is_recorded_and_a_run_killed_mid_schedule_resumes_to_the_same_numbers(tmp_path, monkeypatch):
    cfg = compose_cfg([*TINY, *STEP])
    train(cfg, tmp_path / "whole")
    lrs = [r.get("stage2/train/lr") for r in _records(tmp_path / "whole") if r["stage"] == "stage2"]
    assert lrs == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4])  # warm-up epoch, then halved every epoch
    report = Recorder.record

    def killed_after_stage2_epoch_2(self, fit, epoch, *args):
        report(self, fit, epoch, *args)
        if (fit.stage, epoch) == ("stage2", 2):
            raise KeyboardInterrupt

    monkeypatch.setattr(Recorder, "record", killed_after_stage2_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "resumed")
    monkeypatch.setattr(Recorder, "record", report)
    train(cfg, tmp_path / "resumed")
    assert _records(tmp_path / "whole") == _records(tmp_path / "resumed")
    assert _results(tmp_path / "whole") == _results(tmp_path / "resumed")


@pytest.mark.parametrize(
    "schedule", [STEP, pytest.param(COSINE, marks=pytest.mark.slow)], ids=["step", "cosine-warmup"]
)
def test_a_stack_under_a_schedule_gives_each_member_its_plain_numbers(schedule, tmp_path):
    extra = [[f"seed={s}", *schedule, f"target.lr={lr}"] for s, lr in ((0, 1e-3), (1, 3e-3))]
    cfgs = [compose_cfg([*TINY, *e]) for e in extra]
    for k, cfg in enumerate(cfgs):
        train(cfg, tmp_path / f"plain{k}")
    train_runs(cfgs, [tmp_path / f"turn{k}" for k in range(2)], vectorize=False)
    train_runs(cfgs, [tmp_path / f"vmap{k}" for k in range(2)], vectorize=True)
    for k in range(2):
        plain, vmapped = _records(tmp_path / f"plain{k}"), _records(tmp_path / f"vmap{k}")
        assert plain == _records(tmp_path / f"turn{k}")  # in turn: bit for bit
        lr = [r["stage2/train/lr"] for r in plain if r["stage"] == "stage2"]
        assert lr == [r["stage2/train/lr"] for r in vmapped if r["stage"] == "stage2"]
        losses = [
            (r["stage2/train/loss"], v["stage2/train/loss"]) for r, v in zip(plain, vmapped) if "stage2/train/loss" in r
        ]
        assert all(abs(a - b) < 1e-3 * max(1.0, abs(a)) for a, b in losses)  # vmapped: another order of sums
