"""One process per run directory, one sweep per sweep directory."""

import errno
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)
UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)  # flock on some network file systems


@contextmanager
def folder_lock(folder: str | Path, what: str = "run", key: str = "hydra.run.dir") -> Iterator[None]:
    """Hold `<folder>/.lock` while a process works there (a run trains, a sweep asks and tells): a second one
    stops with one error line naming the holder. It is an flock, so the kernel drops it when its process dies: a
    crashed run never leaves it stuck. Where the file system has no flock, one warning, and no lock."""
    import fcntl

    from denetdm.errors import BusyError

    path = Path(folder) / ".lock"
    with open(path, "a+") as f:  # closing it releases the lock
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise BusyError(
                f"{folder} is in use by {holder}; wait for it to finish, or give this {what} another {key}"
            ) from None
        except OSError as e:
            if e.errno not in UNSUPPORTED:
                raise
            log.warning("%s: this file system cannot lock files (%s); nothing stops a second %s here", folder, e, what)
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()} ({what})")
        f.flush()
        yield
