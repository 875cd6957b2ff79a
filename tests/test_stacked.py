"""Many runs as one stacked model: each member's numbers are its plain run's; a killed stack resumes; the launcher."""

import json
from pathlib import Path

import pytest

from denetdm.files.jsonlines import parse_line
from denetdm.training.pipeline import evaluate_checkpoint, train, train_runs
from denetdm.training.recorder import Recorder
from denetdm.training.stacked import stack_key

from conftest import TINY, compose_cfg, run_cli

# a 3-layer CNN fits 28x28 images with padding; a quarter of TINY's images (a ResNet-20 step costs ~20 MLP steps)
CNN = ["backbone_depth=cnn3_resnet20", "+model.shallow.padding=2", "dataset.train_size=300", "dataset.val_size=50"]
CNN += ["dataset.test_size=100"]


def _records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in parse_line(x).items() if "/time/" not in k} for x in lines]


def _results(run_dir: Path) -> dict:
    res = json.loads((run_dir / "results.json").read_text())
    return {k: v for k, v in res.items() if not k.startswith("time/") and k != "config"}


def _plain_and_stacked(tmp_path: Path, per_member: list[list[str]], vectorize: bool = False):
    cfgs = [compose_cfg([*TINY, *extra]) for extra in per_member]
    for k, cfg in enumerate(cfgs):
        train(cfg, tmp_path / f"plain{k}")
    train_runs(cfgs, [tmp_path / f"stack{k}" for k in range(len(cfgs))], vectorize=vectorize)
    return [(tmp_path / f"plain{k}", tmp_path / f"stack{k}") for k in range(len(cfgs))]


def _max_difference(a: list[dict], b: list[dict], relative: bool = False) -> float:
    assert [(r["stage"], r["epoch"]) for r in a] == [(r["stage"], r["epoch"]) for r in b]
    scale = (lambda v: max(1.0, abs(v))) if relative else (lambda v: 1.0)  # noqa: E731
    return max(abs(x[k] - y[k]) / scale(x[k]) for x, y in zip(a, b) for k in x if isinstance(x[k], float))


def test_the_stack_key_ignores_seeds_stage2_loss_weights_and_learning_rates_only():
    from omegaconf import OmegaConf

    def key(*extra):
        return stack_key(OmegaConf.to_container(compose_cfg([*TINY, *extra]), resolve=True))

    assert key("seed=0") == key("seed=3") == key("seed=1", "method.poe_weight=0.2", "method.temperature=4")
    assert key("seed=0") == key("experts.lr=0.01", "target.weight_decay=0.1")
    assert key("seed=0") != key("experts.epochs=3") and key("seed=0") != key("method=erm")
    assert key("seed=0") != key("stage=stage1")


@pytest.mark.slow
@pytest.mark.parametrize(
    "family,method",
    [
        ("mlp", "denetdm"),
        ("mlp", "erm"),
        ("mlp", "jtt"),  # its members' epochs differ in length (each upsamples its own error set)
        pytest.param("cnn", "denetdm", marks=pytest.mark.slow),
        pytest.param("cnn", "erm", marks=pytest.mark.slow),
    ],
)
def test_a_stack_of_3_gives_each_member_the_numbers_of_its_plain_run(family, method, tmp_path):
    extra = [f"method={method}", *(CNN if family == "cnn" else []), *(["target.epochs=3"] if method == "jtt" else [])]
    for plain, stacked in _plain_and_stacked(tmp_path, [[f"seed={s}", *extra] for s in range(3)]):
        assert _records(plain) == _records(stacked)  # bit for bit: members step in turn on a CPU
        assert _results(plain) == _results(stacked)
        assert sorted(p.name for p in (stacked / "checkpoints").iterdir()) == sorted(
            p.name for p in (plain / "checkpoints").iterdir()
        )
        assert json.loads((stacked / "stack.json").read_text())["members"][0].endswith("stack0")


@pytest.mark.slow
def test_members_may_differ_in_the_stage2_loss_weights_and_learning_rates(tmp_path):
    per_member = [
        ["method.poe_weight=1.0"],
        ["method.poe_weight=0.3", "method.dist_weight=0.5", "target.lr=0.003"],
        ["method.temperature=4", "seed=2", "experts.lr=0.002"],
    ]
    for plain, stacked in _plain_and_stacked(tmp_path, per_member):
        assert _records(plain) == _records(stacked)
    data = compose_cfg(TINY)
    from denetdm.training.pipeline import load_data, plan

    (loaded, _) = load_data(plan(data, tmp_path / "x"))
    got = evaluate_checkpoint(str(tmp_path / "stack1" / "checkpoints" / "stage2_selected.pt"), loaded, data.method)
    want = evaluate_checkpoint(str(tmp_path / "plain1" / "checkpoints" / "stage2_selected.pt"), loaded, data.method)
    got.pop("checkpoint"), want.pop("checkpoint")
    assert got == want  # its checkpoints are ordinary ones: stage=eval reads them


@pytest.mark.slow
def test_vectorized_members_stay_close_to_their_plain_runs(tmp_path):
    # vmap's batched kernels sum in another order: ulp-sized differences, which Adam can grow (docs/stacking-gpu.md)
    for plain, stacked in _plain_and_stacked(tmp_path, [[f"seed={s}"] for s in range(3)], vectorize=True):
        a, b = _records(plain), _records(stacked)
        keep = lambda r: {k: v for k, v in r.items() if "/train/" in k or k in ("stage", "epoch")}  # noqa: E731
        losses = [keep(r) for r in a], [keep(r) for r in b]
        assert _max_difference(*losses) < 1e-4 and _max_difference(a, b) < 0.02


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_vectorized_members_with_their_own_learning_rates_stay_close_to_their_plain_runs(optimizer, tmp_path):
    per_member = [
        ["experts.lr=0.001"],
        ["experts.lr=0.002", "target.lr=0.003", "target.weight_decay=0.01"],
        ["experts.weight_decay=0.02", "seed=2"],
    ]
    if optimizer == "sgd":  # the preset's SGD momentum is in its yaml; larger steps suit it
        per_member = [[*m, "optimizer.momentum=0.9"] for m in per_member]
    pairs = _plain_and_stacked(tmp_path, [[f"optimizer={optimizer}", *m] for m in per_member], vectorize=True)
    for plain, stacked in pairs:
        a, b = _records(plain), _records(stacked)
        keep = lambda r: {k: v for k, v in r.items() if "/train/" in k or k in ("stage", "epoch")}  # noqa: E731
        # relative: stage 2's distillation loss (about 9) grows the stage-1 teacher's ulps; on an AVX2 CPU AdamW's
        # member 0 was 2.2e-3 (2.6e-4 relative) apart after two stage-2 epochs, a wrong learning rate is far more
        assert _max_difference([keep(r) for r in a], [keep(r) for r in b], relative=True) < 1e-3
        assert _max_difference(a, b) < 0.05  # there a cell of 45 test images moved by one (0.022)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dfa", "lc"])  # per-sample state changed in place: not vmapped
def test_dfa_and_lc_in_a_stack_keep_their_plain_numbers(method, tmp_path):
    for plain, stacked in _plain_and_stacked(tmp_path, [[f"method={method}", f"seed={s}"] for s in range(2)], True):
        assert _records(plain) == _records(stacked)


@pytest.mark.slow
def test_methods_that_cannot_stack_train_one_after_another_with_their_plain_numbers(tmp_path):
    for plain, stacked in _plain_and_stacked(tmp_path, [["method=lff", f"seed={s}"] for s in range(2)]):
        assert _records(plain) == _records(stacked)
    # runs that share nothing (another method, other epochs) given to one stack: each the plain way
    mixed = [["method=erm"], ["experts.epochs=3", "seed=4"]]
    for plain, stacked in _plain_and_stacked(tmp_path / "mixed", mixed, vectorize=True):
        assert _records(plain) == _records(stacked)


def test_vmapped_convolutional_members_get_contiguous_images(tmp_path, monkeypatch):
    # on CUDA, batch norm asks a batched tensor whether it is channels-last contiguous, which vmap refuses (a lent
    # H200 stopped every Corrupted CIFAR-10 stack so): vmapped members keep the default layout; plain runs do not
    from denetdm.training import pipeline

    layouts = []
    real = pipeline.load_data

    def spy(p, vmapped=False):
        data, channels_last = real(p, vmapped)
        layouts.append((channels_last, data.train.x.is_contiguous()))
        return data, channels_last

    monkeypatch.setattr(pipeline, "load_data", spy)
    cfgs = [compose_cfg([*TINY, *CNN, "experts.epochs=1", "target.epochs=1", f"seed={s}"]) for s in range(2)]
    train_runs(cfgs, [tmp_path / f"s{k}" for k in range(2)], vectorize=True)
    assert layouts == [(False, True), (False, True)]  # each member's seed its own data
    train_runs(cfgs[:1], [tmp_path / "plain"], vectorize=True)  # a stack of one is a plain run
    assert layouts[-1] == (True, False)


class _Killed(BaseException):
    pass


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill_at,vectorize",
    [(("stage1", 2, 1), False), (("stage2", 1, 2), False), (("stage2", 1, 2), True)],
)  # (phase, epoch, member reporting): at stage-1 epoch 2 members 0 and 1 are checkpointed, member 2 is not
def test_a_killed_stack_resumes_to_the_uninterrupted_numbers(kill_at, vectorize, tmp_path, monkeypatch):
    cfgs = [compose_cfg([*TINY, "experts.epochs=3", f"seed={s}"]) for s in range(3)]
    whole = [tmp_path / f"whole{k}" for k in range(3)]
    train_runs(cfgs, whole, vectorize=vectorize)
    runs = [tmp_path / f"killed{k}" for k in range(3)]
    report, seen = Recorder.record, []

    def dying(self, fit, epoch, *args):
        report(self, fit, epoch, *args)
        seen.append(self.run_dir)
        if (fit.stage, epoch) == kill_at[:2] and self.run_dir == runs[kill_at[2]]:
            raise _Killed

    monkeypatch.setattr(Recorder, "record", dying)
    with pytest.raises(_Killed):
        train_runs(cfgs, runs, vectorize=vectorize)
    monkeypatch.undo()
    assert not any((r / "results.json").exists() for r in runs)
    train_runs(cfgs, runs, vectorize=vectorize)  # a vmapped stack is rebuilt from the members' checkpoints
    for a, b in zip(whole, runs, strict=True):
        assert _records(a) == _records(b) and _results(a) == _results(b)


@pytest.mark.slow
@pytest.mark.parametrize("vectorize", [False, True])
def test_a_member_stopped_by_the_pruner_leaves_the_others_to_train_on(vectorize, tmp_path, monkeypatch):
    import denetdm.training.pipeline as pipeline
    from denetdm.sweeps.pruning import TrialPruned

    cfgs = [compose_cfg([*TINY, "target.epochs=3", f"seed={s}"]) for s in range(3)]
    whole = [tmp_path / f"whole{k}" for k in range(3)]
    train_runs(cfgs, whole, vectorize=vectorize)
    open_run = pipeline.open_run

    def pruned_after_stage2_epoch_1(stage, epoch, record):
        if (stage, epoch) == ("stage2", 1):
            raise TrialPruned("pruned by the sweeper after epoch 1 of stage2")

    def opened(p, data, pruning):
        runner = open_run(p, data, None)
        if pruning:  # the member given a trial reports to it, as open_run sets up in a sweep
            runner.trainer.recorder.on_epoch = pruned_after_stage2_epoch_1
        return runner

    monkeypatch.setattr(pipeline, "open_run", opened)
    runs = [tmp_path / f"run{k}" for k in range(3)]
    out = train_runs(cfgs, runs, [None, {"trial": 1}, None], vectorize=vectorize)
    assert isinstance(out[1], TrialPruned) and not (runs[1] / "results.json").exists()
    assert [r["epoch"] for r in _records(runs[1]) if r["stage"] == "stage2"] == [1]
    for k in (0, 2):  # in turn: their uninterrupted numbers; vmapped: two members sum in another order than three
        a, b = _records(whole[k]), _records(runs[k])
        if vectorize:
            losses = [{key: v for key, v in r.items() if "/train/" in key or key in ("stage", "epoch")} for r in a + b]
            assert _max_difference(losses[: len(a)], losses[len(a) :]) < 1e-4 and _max_difference(a, b) < 0.02
        else:
            assert a == b and _results(whole[k]) == _results(runs[k])


@pytest.mark.slow
def test_launcher_stacked_gives_each_job_a_run_directory_with_its_plain_numbers(tmp_path):
    args = ["-m", "seed=0,1,2", *TINY]
    assert run_cli([*args, f"hydra.sweep.dir={tmp_path / 'plain'}"]).returncode == 0
    proc = run_cli([*args, "launcher=stacked", f"hydra.sweep.dir={tmp_path / 'stacked'}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "as one stack" in proc.stdout + proc.stderr
    for job in ("0", "1", "2"):
        plain, stacked = tmp_path / "plain" / job, tmp_path / "stacked" / job
        assert _records(plain) == _records(stacked)
        assert (stacked / ".hydra" / "overrides.yaml").exists() and (stacked / "stack.json").exists()
        assert json.loads((stacked / "results.json").read_text())["config"]["trial"]["params"]["seed"] == int(job)
    # the same command again: every member is finished, nothing trains
    again = run_cli([*args, "launcher=stacked", f"hydra.sweep.dir={tmp_path / 'stacked'}"])
    assert again.returncode == 0 and again.stdout.count("already finished") == 3


@pytest.mark.slow
def test_a_diverging_member_is_set_apart_the_others_finish_and_a_rerun_retries_only_it(tmp_path):
    args = ["-m", "target.lr=1e-3,1e5", *TINY, "launcher=stacked", f"hydra.sweep.dir={tmp_path}"]
    proc = run_cli(args)  # Adam at lr 1e5 sends the target's loss to ~1e32 in its first epoch, finite
    out = proc.stdout + proc.stderr
    assert "as one stack" in out and "stage2 epoch 1: the training loss is" in out and "it diverges" in out
    assert (tmp_path / "0" / "results.json").exists() and not (tmp_path / "1" / "results.json").exists()
    assert "No epoch of stage2 was saved yet" in out  # never a file that does not exist
    again = run_cli(args)
    assert again.stdout.count("already finished") == 1 and "it diverges" in again.stdout + again.stderr


@pytest.mark.slow
def test_bad_launcher_settings_are_one_error_line(tmp_path):
    for bad, words in (
        ("hydra.launcher.vectorize=maybe", "vectorize"),
        ("hydra.launcher.max_members=0", "max_members"),
        ("hydra.launcher.max_members=abc", "max_members"),
    ):
        proc = run_cli(["-m", "seed=0,1", *TINY, "launcher=stacked", bad, f"hydra.sweep.dir={tmp_path / 'x'}"])
        (line,) = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and line.startswith("error: hydra.launcher.") and words in line


@pytest.mark.slow
def test_each_member_of_a_stack_logs_its_own_wandb_run(tmp_path, monkeypatch):
    from wandb_files import read_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    args = [*[a for a in TINY if not a.startswith("logger")], "logger=wandb"]
    runs = [tmp_path / f"m{s}" for s in range(2)]
    train_runs([compose_cfg([*args, f"seed={s}"]) for s in range(2)], runs)
    ids = set()
    for run in runs:
        (path,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
        logged = read_run(path)
        ids.add(json.loads((run / "wandb_run.json").read_text())["id"])
        mine = [r["stage1/shallow/val/acc"] for r in _records(run) if r["stage"] == "stage1"]
        assert [float(h["stage1/shallow/val/acc"]) for h in logged["history"] if "stage1/shallow/val/acc" in h] == mine
    assert len(ids) == 2


def test_a_vmapped_stack_evaluates_its_members_at_once_as_each_would_alone(tmp_path):
    from denetdm.training.evaluation import evaluate_all
    from denetdm.training.pipeline import load_data, open_run, plan, prepare
    from denetdm.training.stacked import Stack

    runners = []
    for s in range(3):
        p = plan(compose_cfg([*TINY, f"seed={s}"]), tmp_path / str(s))
        prepare(p)
        runners.append(open_run(p, load_data(p), None))
    members = [r.build("stage1", None) for r in runners]
    got = Stack(members).evaluate_all([r.data for r in runners], "stage1", batch_size=150)
    for member, runner, mine in zip(members, runners, got, strict=True):
        alone = evaluate_all(member, runner.data, "stage1")
        assert mine.keys() == alone.keys() and max(abs(mine[k] - alone[k]) for k in alone) < 1e-2
