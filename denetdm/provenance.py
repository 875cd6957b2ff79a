"""Where a run's numbers came from: the code's commit and the machine (recorded in results.json and the store)."""

import os
import platform
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]  # the checkout


def commit() -> str:
    """The checkout's commit, `+dirty` when tracked files differ from it; `unknown` outside a git checkout."""
    if os.environ.get("DENETDM_COMMIT"):  # make gpu-reproduce: the GPU machine's copy of the tree has an older .git
        return os.environ["DENETDM_COMMIT"]
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    """The device that trained (the GPU's name on CUDA), the processor, cores, torch threads, torch's CPU kernels
    and torch version."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        "device": name,
        "processor": _processor(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        # the vector instructions torch's CPU kernels use (AVX2, AVX512, ...): each rounds its own way, so a CPU
        # run repeats bit for bit only with the same ones (ATEN_CPU_CAPABILITY=avx2 picks them where the CPU has more)
        "cpu_kernels": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
    }
