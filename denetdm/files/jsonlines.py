"""JSON files and JSON-lines files (metrics.jsonl, trials.jsonl): written atomically or appended and
flushed; a damaged line is skipped with one warning naming it."""

import json
import logging
import os
from pathlib import Path
from typing import Any

from denetdm.files.atomic import FILE_MODE, atomic_write

log = logging.getLogger(__name__)


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temporary file, then rename), keys in the object's order: a method's phases are in
    the order they run (a resolved config's `method.phases`), which the fingerprint of a read-back run needs."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def json_line(record: dict) -> str:
    """A record as one JSON line."""
    return json.dumps(record, sort_keys=True) + "\n"


def parse_line(line: str) -> dict | None:
    """The record of a JSON line, or None when it does not parse as a JSON object."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


class JsonLines:
    """An append-only file of JSON records, one a line (metrics.jsonl per run, trials.jsonl per sweep)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, record: dict) -> None:
        """Append one record and flush it to disk; a failed write (a full disk) is cut off again, so the file
        ends with the last whole record, and raised as the OSError it is."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json_line(record).encode()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":  # never glue a record onto a damaged last line
                data = b"\n" + data
            try:
                while data:
                    data = data[os.write(fd, data) :]
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, size)  # unbuffered: nothing is left to flush when the file closes
                raise
        finally:
            os.close(fd)

    def write_all(self, records: list[dict]) -> None:
        """Replace the file with `records` (atomically)."""
        with atomic_write(self.path) as f:
            f.writelines(json_line(r) for r in records)

    def _lines(self) -> list[tuple[bytes, dict | None]]:
        """(raw line, record or None if damaged); a last record cut by a crash (no newline) is left out, other
        bytes after the last newline (garbage) are a damaged line."""
        if not self.path.exists():
            return []
        *lines, tail = self.path.read_bytes().split(b"\n")
        if tail.strip() and not tail.startswith(b"{"):
            lines.append(tail)
        return [(line, _parse(line)) for line in lines if line.strip()]

    def read(self) -> list[dict]:
        """All records; lines that do not parse are skipped with one warning naming them."""
        lines = self._lines()
        if bad := [i + 1 for i, (_, r) in enumerate(lines) if r is None]:
            log.warning(
                "%s: line %s damaged (not a JSON object); skipped",
                self.path,
                ", ".join(map(str, bad)),
            )
        return [r for _, r in lines if r is not None]

    def truncate(self, stage: str, after_epoch: int) -> None:
        """Drop the records of `stage` past `after_epoch` (written after the checkpoint we resume from); damaged
        lines stay as they are, for a person to look at."""
        keep = []
        for line, r in self._lines():
            if r is None:
                keep.append(line + b"\n")  # byte for byte
            elif not (r.get("stage") == stage and r.get("epoch", 0) > after_epoch):
                keep.append(json_line(r).encode())
        with atomic_write(self.path, "wb") as f:
            f.writelines(keep)


def _parse(line: bytes) -> dict | None:
    try:
        return parse_line(line.decode())
    except UnicodeDecodeError:
        return None
