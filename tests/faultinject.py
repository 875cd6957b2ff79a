"""Run run.py with one fault armed, for tests: `python tests/faultinject.py FAULT run.py ARGS...`.

FAULT is one of
  kill-mid-write:<name>[:<n>]  SIGKILL after writing half of the n-th file (default the first) named <name>*
  kill-after-write:<name>:<n>  SIGKILL once the n-th file named <name>* is written (before the next write)
  kill-at-stage:<stage>        SIGKILL as <stage> begins (between the stages)
  kill-after-epoch:<stage>:<n> SIGKILL once epoch n of <stage> is checkpointed
  kill-after-generating        SIGKILL once the dataset is generated, before its cache file is written
The hooks wrap denetdm's own functions from outside; nothing in the package knows about them.
"""

import io
import os
import runpy
import signal
import sys
from contextlib import contextmanager
from pathlib import Path


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _on_write(name: str, nth: int, fail) -> None:
    """Call `fail(real_file, data)` instead of the n-th atomic write of a file whose name starts with `name`."""
    import denetdm.files.atomic as atomic

    original, seen = atomic.atomic_write, [0]

    @contextmanager
    def write(path, mode="w", previous=None):
        with original(path, mode, previous) as f:
            if not Path(path).name.startswith(name):
                yield f
                return
            seen[0] += 1
            if seen[0] != nth:
                yield f
                return
            buf = io.BytesIO() if "b" in mode else io.StringIO()
            yield buf
            fail(f, buf.getvalue())

    atomic.atomic_write = write


def _after_write(name: str, nth: int) -> None:
    """SIGKILL once the n-th atomic write of a file whose name starts with `name` is complete."""
    import denetdm.files.atomic as atomic

    original, seen = atomic.atomic_write, [0]

    @contextmanager
    def write(path, mode="w", previous=None):
        with original(path, mode, previous) as f:
            yield f
        if Path(path).name.startswith(name):
            seen[0] += 1
            if seen[0] == nth:
                _die()

    atomic.atomic_write = write


def _half_then_die(f, data) -> None:
    f.write(data[: len(data) // 2])
    f.flush()
    os.fsync(f.fileno())
    _die()


def _wrap_method(cls, name: str, before=None, after=None) -> None:
    original = getattr(cls, name)

    def wrapped(self, *args, **kwargs):
        if before:
            before(*args)
        out = original(self, *args, **kwargs)
        if after:
            after(*args)
        return out

    setattr(cls, name, wrapped)


def arm(fault: str) -> None:
    """Install the hook `fault` describes."""
    kind, _, rest = fault.partition(":")
    parts = rest.split(":") if rest else []
    if kind == "kill-mid-write":
        nth = int(parts[1]) if len(parts) > 1 else 1
        _on_write(parts[0], nth, _half_then_die)
    elif kind == "kill-after-write":
        _after_write(parts[0], int(parts[1]))
    elif kind == "kill-at-stage":
        from denetdm.training.loop import Trainer

        _wrap_method(Trainer, "begin", before=lambda stage, *a: stage == parts[0] and _die())
    elif kind == "kill-after-epoch":
        from denetdm.training.recorder import Recorder

        stage, epoch = parts[0], int(parts[1])
        _wrap_method(Recorder, "record", after=lambda fit, e, *a: (fit.stage, e) == (stage, epoch) and _die())
    elif kind == "kill-after-generating":
        import denetdm.data.base as base

        original = base.cached
        base.cached = lambda cache_dir, prefix, params, build: original(
            cache_dir, prefix, params, lambda: (build(), _die())[0]
        )
    else:
        sys.exit(f"faultinject: unknown fault {fault!r}")


if __name__ == "__main__":
    fault, script, *args = sys.argv[1:]
    sys.path.insert(0, str(Path(script).resolve().parent))
    arm(fault)
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")
