"""Durable atomic file writes: a temporary file in the same folder, flushed to the disk, renamed over the target,
and the folder's entry flushed too, so that readers never see half a file and a power cut leaves the old file or
the new one, never an empty or torn one. Files get the permissions the process umask gives (0644 typically), so
colleagues on a shared cluster can read results (mkstemp alone would make them 0600)."""

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def _umask() -> int:
    mask = os.umask(0)  # read once, at import: os.umask is process-wide and not safe to call from threads
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename) to the disk; a filesystem that cannot is left as it is."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (and Windows) do not fsync folders
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", previous: Path | None = None) -> Iterator[IO]:
    """Open a temporary file for writing; on success it is flushed and replaces `path` (whose old version becomes
    `previous`, where given), on any failure (a full disk, a size limit, an exception of the writer) it is
    removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)  # a crash before the next line leaves `previous`, which a reader falls back to
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_save(obj: object, path: str | Path, previous: Path | None = None) -> None:
    """torch.save, durably and atomically (checkpoints, dataset caches), streamed to the file: a dataset cache is
    never held twice in memory. torch's writer reports a refused write (ENOSPC, EFBIG) as an opaque RuntimeError;
    the file's own OSError, which says which it was, is raised instead."""
    import torch

    with atomic_write(path, "wb", previous) as f:
        out = _Writes(f)
        try:
            torch.save(obj, out)
        except RuntimeError:
            if out.error is not None:
                raise out.error from None
            raise


class _Writes:
    """A binary file for torch.save that keeps the OSError of a refused write."""

    def __init__(self, f: IO) -> None:
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()
