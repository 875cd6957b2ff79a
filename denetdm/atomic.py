"""Atomic file writes (a temporary file in the same folder, then a rename, so readers never see half a file) and
the lock that keeps one process per run directory, and the checksum that finds a damaged file."""

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file for writing; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj: object, path: str | Path) -> None:
    """torch.save that readers never see half written (checkpoints, dataset caches)."""
    import torch

    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold `<run_dir>/.lock` while a process trains there: a second process stops with one error line. It is an
    flock, so the kernel drops it when its process dies: a crashed run never leaves it stuck."""
    import fcntl

    from denetdm.errors import BusyError

    path = Path(run_dir) / ".lock"
    f = open(path, "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise BusyError(
                f"{run_dir} is in use by {holder}; wait for it to finish, or give this run another hydra.run.dir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()}")
        f.flush()
        yield
    finally:
        f.close()  # releases the lock


def tree_digest(obj: object) -> str:
    """sha256 of nested dicts and lists of tensors and plain values (what a checkpoint or cache file holds): a
    file whose bytes were flipped loads without complaint from torch, which checks no checksum itself."""
    h = hashlib.sha256()
    _feed(h, obj, "")
    return h.hexdigest()


def _feed(h: "hashlib._Hash", obj: object, name: str) -> None:
    import torch

    if isinstance(obj, dict):
        if name:  # a nested dict says its keys, so an empty one counts too (the top level is the cache's layout)
            h.update(f"{name}:dict{sorted(map(str, obj))}".encode())
        for key in sorted(obj, key=str):
            _feed(h, obj[key], f"{name}/{key}" if name else str(key))
    elif isinstance(obj, list | tuple):
        h.update(f"{name}:{type(obj).__name__}[{len(obj)}]".encode())
        for i, item in enumerate(obj):
            _feed(h, item, f"{name}[{i}]")
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())  # the layout the dataset cache has always used
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    else:
        h.update(f"{name}={type(obj).__name__}:{obj!r}".encode())
