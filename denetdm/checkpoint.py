"""Checkpoints: written atomically, read with weights_only=True, damage reported in one line."""

from pathlib import Path

import torch

from denetdm.atomic import atomic_save
from denetdm.errors import CheckpointError

__all__ = ["atomic_save", "load_checkpoint"]


def load_checkpoint(path: str | Path, what: str = "checkpoint") -> dict:
    """Load a checkpoint dict safely (tensors and plain data only) or raise a CheckpointError."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist; give the path of a .pt file written by run.py")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{what} {path} is damaged or not a denetdm checkpoint ({type(e).__name__}); "
            "delete it to retrain that stage, or point to another file"
        ) from None
    if not isinstance(ckpt, dict) or "kind" not in ckpt:
        raise CheckpointError(f"{what} {path} is not a denetdm checkpoint (no 'kind' entry)")
    return ckpt
