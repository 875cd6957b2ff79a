"""Shared fixtures: a private dataset cache, Hydra compose, CLI runs of run.py, and tiny configs."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from denetdm.cli import quote_numeric_choices

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
MNIST_ROOT = os.environ.get("DENETDM_DATA", "")

COMMON = ["logger=none", "device=cpu", "progress=false"]
# A synthetic dataset and schedule small enough for seconds-long end-to-end runs.
TINY = [
    "dataset=synthetic",
    "dataset.train_size=1200",
    "dataset.test_size=400",
    "dataset.val_size=200",
    "experts.epochs=2",
    "target.epochs=2",
    *COMMON,
]

# one thread per pytest-xdist worker (make test runs two on these 2 cores), two in a single process
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # tests never touch the user's cache; CI gets a fresh one too
    os.environ["DENETDM_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ.setdefault("WANDB_MODE", "disabled")


def compose_cfg(overrides: list[str] | None = None):
    """The real config composed with Hydra's compose API (no run directory, no logging set-up)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=quote_numeric_choices(overrides or []))


def method_hparams(method: str, phase: str | None = None, **changed) -> dict:
    """A phase's hyperparameters as conf/method/<method>.yaml sets them (their one home), some `changed`."""
    from omegaconf import OmegaConf

    from denetdm.training import phases as ph

    node = ph.resolve(OmegaConf.to_container(compose_cfg([f"method={method}"]).method, resolve=True))
    return ph.hparams(node["phases"][phase or method]) | changed


def run_cli(args: list[str], run_dir: Path | None = None, env: dict | None = None, timeout: int = 300):
    """Run `python run.py ARGS` in a subprocess; returns the CompletedProcess."""
    cmd = [sys.executable, str(ROOT / "run.py"), *args]
    if run_dir is not None:
        cmd.append(f"hydra.run.dir={run_dir}")
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)


def read_results(run_dir: Path) -> dict:
    """results.json of a run directory."""
    return json.loads((Path(run_dir) / "results.json").read_text())


def mnist_available() -> bool:
    """Whether the real MNIST files are under $DENETDM_DATA."""
    return bool(MNIST_ROOT) and (Path(MNIST_ROOT) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()


def fake_mnist(root: Path, n_train: int = 600, n_test: int = 200, seed: int = 0) -> Path:
    """A data root holding MNIST/raw: idx files of random 28 x 28 images, labels cycling through the digits."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        pixels = rng.integers(0, 256, n * 28 * 28, dtype=np.uint8).tobytes()
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + pixels)
        labels = (np.arange(n) % 10).astype(np.uint8).tobytes()
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels)
    return root


needs_mnist = pytest.mark.skipif(
    not mnist_available(), reason="real MNIST not found: set DENETDM_DATA to a folder holding MNIST/raw"
)
