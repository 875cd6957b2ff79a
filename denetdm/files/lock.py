"""One process per run directory."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
