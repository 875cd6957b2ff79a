"""captured=true: CUDA graphs for the training steps. On a CPU it changes nothing; the GPU checks skip without one."""

import json

import pytest
import torch

from denetdm.errors import ConfigError
from denetdm.files.jsonlines import parse_line
from denetdm.training.pipeline import train

from conftest import TINY, compose_cfg


def _numbers(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in parse_line(x).items() if "/time/" not in k} for x in lines]


@pytest.mark.slow
def test_on_a_cpu_captured_runs_the_plain_steps(tmp_path):
    train(compose_cfg([*TINY, "device=cpu"]), tmp_path / "plain")
    train(compose_cfg([*TINY, "device=cpu", "captured=true"]), tmp_path / "captured")
    assert _numbers(tmp_path / "plain") == _numbers(tmp_path / "captured")
    # a CPU ignores the setting: the run records what it did, so either setting resumes the other's directory
    assert json.loads((tmp_path / "captured" / "results.json").read_text())["config"]["captured"] is False


def test_captured_is_auto_true_or_false(tmp_path):
    for bad in ("yes", 1, 0.5):
        with pytest.raises(ConfigError, match="captured must be auto, true or false"):
            train(compose_cfg([*TINY, f"captured={bad}"]), tmp_path / str(bad))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="captured steps need CUDA; no GPU here")
@pytest.mark.parametrize("extra", [[], ["method=erm"], ["method=lff"], ["target.drop_last=false"]])
def test_captured_steps_on_cuda_are_deterministic_and_close_to_eager_ones(extra, tmp_path):
    base = [*TINY, "device=cuda", "dataset.train_size=1100", *extra]  # 1000 training images: a partial batch
    train(compose_cfg([*base, "captured=false"]), tmp_path / "eager")
    for k in (0, 1):
        train(compose_cfg([*base, "captured=true"]), tmp_path / f"captured{k}")
    assert _numbers(tmp_path / "captured0") == _numbers(tmp_path / "captured1")
    eager, captured = _numbers(tmp_path / "eager"), _numbers(tmp_path / "captured0")
    losses = [(a[k], b[k]) for a, b in zip(eager, captured) for k in a if "/train/" in k]
    assert max(abs(a - b) for a, b in losses) < 1e-3  # capturable Adam: bias corrections in float32 on the device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="captured steps need CUDA; no GPU here")
@pytest.mark.parametrize("vectorize", [True, False])
def test_captured_stacks_on_cuda_are_deterministic_and_close_to_eager_plain_runs(vectorize, tmp_path):
    from denetdm.training.pipeline import train_runs

    base = [*TINY, "device=cuda", "dataset.train_size=1100"]
    members = [["seed=0"], ["seed=1", "method.dist_weight=0.5"], ["seed=2", "experts.lr=0.002"]]
    cfgs = [compose_cfg([*base, *m, "captured=true"]) for m in members]
    for rep in (0, 1):
        train_runs(cfgs, [tmp_path / f"stack{rep}_{k}" for k in range(3)], vectorize=vectorize)
    for k, m in enumerate(members):
        train(compose_cfg([*base, *m, "captured=false"]), tmp_path / f"eager{k}")
        assert _numbers(tmp_path / f"stack0_{k}") == _numbers(tmp_path / f"stack1_{k}")
        eager, captured = _numbers(tmp_path / f"eager{k}"), _numbers(tmp_path / f"stack0_{k}")
        losses = [(a[key], b[key]) for a, b in zip(eager, captured) for key in a if "/train/" in key]
        assert max(abs(a - b) for a, b in losses) < 1e-3
