"""Checkpoints: written atomically with a checksum, read with weights_only=True, damage reported in one line."""

from pathlib import Path

import torch

from denetdm.atomic import atomic_save, tree_digest
from denetdm.errors import CheckpointError

__all__ = ["atomic_save", "load_checkpoint", "save_checkpoint"]

KEYS = {"kind", "meta", "method", "optimizer", "generator", "epoch", "best_epoch", "best_score", "best_metrics",
        "elapsed_s"}  # fmt: skip


def save_checkpoint(ckpt: dict, path: Path, what: str = "checkpoint") -> None:
    """Write `ckpt` with a digest of its contents; a failed write (a full disk) leaves the old file as it was."""
    try:
        atomic_save({**ckpt, "digest": tree_digest(ckpt)}, path)
    except OSError as e:
        raise CheckpointError(
            f"could not write the {what} {path} ({e.strerror or e}); the previous one is intact: free space "
            "(or fix the folder's permissions) and run the same command again to continue from it"
        ) from None


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
        raise CheckpointError(f"{what} {path} is damaged or not a denetdm checkpoint (no 'kind' entry)")
    digest = ckpt.pop("digest", None)
    # checkpoints written before the checksum have none, and only the keys the trainer writes
    if (digest is None and set(ckpt) - KEYS) or (digest is not None and digest != tree_digest(ckpt)):
        raise CheckpointError(
            f"{what} {path} is damaged (its contents do not match its checksum); delete it to retrain that stage"
        )
    return ckpt
