"""Checkpoints: written atomically with a checksum, read with weights_only=True, damage reported in one line."""

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from denetdm.errors import CheckpointError
from denetdm.files.atomic import atomic_save
from denetdm.files.digest import tree_digest
from denetdm.methods.denetdm_reference import is_reference

__all__ = ["CheckpointWriter", "atomic_save", "load_checkpoint", "on_host", "save_checkpoint"]


def save_checkpoint(ckpt: dict, path: Path, what: str = "checkpoint", previous: Path | None = None) -> None:
    """Write `ckpt` with a digest of its contents (the old file kept as `previous`, where given); a failed write
    (a full disk) leaves the old file as it was."""
    try:
        ckpt = on_host(ckpt)  # each tensor copied off the GPU once; the digest and the file read host memory
        atomic_save({**ckpt, "digest": tree_digest(ckpt)}, path, previous)
    except OSError as e:
        kept = "the previous one is intact" if path.exists() else "there is no earlier one"
        raise CheckpointError(
            f"could not write the {what} {path} ({e.strerror or e}); {kept}: free space (or fix the folder's "
            "permissions) and run the same command again to continue"
        ) from None


class CheckpointWriter:
    """A run's files written in order by one background thread while training goes on (GPU runs: an epoch's record
    and checkpoints cost a GPU epoch's worth of milliseconds per member of a stack, mostly fsync and the digest).
    Tensors are copied to host memory before `save` returns; a write error is raised by the next call or by
    `flush`. A kill loses only the files still queued, in order: a checkpoint is never written before its epoch's
    record, every file on disk is whole, and a resume starts from the last checkpoint written."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def call(self, write: Callable[..., None], *args: object, background: bool) -> None:
        """`write(*args)` now, or queued behind the earlier writes where `background`."""
        self._raise_errors()
        if not background:
            write(*args)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoints")
        self._pending.append(self._pool.submit(write, *args))

    def save(self, ckpt: dict, path: Path, what: str, background: bool, previous: Path | None = None) -> None:
        """`save_checkpoint`, in the background where asked."""
        snapshot = on_host(ckpt, copy=True) if background else ckpt  # training may change the tensors at once
        self.call(save_checkpoint, snapshot, path, what, previous, background=background)

    def flush(self) -> None:
        """Wait for the queued files (raising the first write error) and end the thread."""
        pending, self._pending = self._pending, []
        pool, self._pool = self._pool, None
        try:
            for future in pending:
                future.result()
        finally:
            if pool is not None:
                pool.shutdown(wait=True)

    def _raise_errors(self) -> None:
        done = [f for f in self._pending if f.done()]
        self._pending = [f for f in self._pending if not f.done()]
        for future in done:
            future.result()


def on_host(obj: object, copy: bool = False) -> object:
    """`obj` with its tensors in host memory (CPU tensors cloned too where `copy`)."""
    if isinstance(obj, torch.Tensor):
        if obj.device.type != "cpu":
            return obj.detach().cpu()
        return obj.detach().clone() if copy else obj
    if isinstance(obj, dict):
        out = {k: on_host(v, copy) for k, v in obj.items()}
        if hasattr(obj, "_metadata"):  # a module state_dict's versions (read by load_state_dict)
            out = type(obj)(out)
            out._metadata = obj._metadata
        return out
    if type(obj) in (list, tuple):
        return type(obj)(on_host(v, copy) for v in obj)
    return obj


def load_checkpoint(
    path: str | Path, what: str = "checkpoint", reference: Callable[[dict], dict] | None = None
) -> dict:
    """Load a checkpoint dict safely (tensors and plain data only) or raise a CheckpointError; `reference` turns a
    state dict that the reference code saved (it has no checksum) into one."""
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
    if reference is not None and is_reference(ckpt):
        return reference(ckpt)
    if not isinstance(ckpt, dict) or "kind" not in ckpt:
        raise CheckpointError(f"{what} {path} is damaged or not a denetdm checkpoint (no 'kind' entry)")
    digest = ckpt.pop("digest", None)
    if digest is None or digest != tree_digest(ckpt):
        raise CheckpointError(
            f"{what} {path} is damaged (its contents do not match its checksum); delete it to retrain that stage"
        )
    return ckpt
