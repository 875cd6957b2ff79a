"""Read back what a W&B offline run logged, from its `.wandb` transaction log (test helper).

The file is a LevelDB-style log: a 7-byte header (':W&B', magic 0xBEE1, version), then 32 KiB blocks of
chunks, each with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) and a
protobuf `Record` as payload.
"""

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path

BLOCK = 32768
WAIT_S = 60.0  # for W&B's writer to finish the file


def _payloads(path: Path) -> Iterator[bytes]:
    data = Path(path).read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a W&B transaction log"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            break
        chunk, pos = data[pos : pos + length], pos + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk


def _records(path: Path) -> list:
    """The file's records once it holds the run's `exit` record (waiting up to WAIT_S), else as they are."""
    from wandb.proto import wandb_internal_pb2 as pb

    # W&B's writer (another process) buffers 32 KiB blocks and may close the file after `finish()` returns:
    # a small run read at once can look empty
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            records = [pb.Record.FromString(p) for p in _payloads(path)]
        except Exception:  # a chunk cut short by the writer
            if time.monotonic() > deadline:
                raise
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def read_run(path: Path) -> dict:
    """{'run': {group, job_type, tags, name, config keys}, 'history': [dict], 'summary': dict} of one run file."""
    out: dict = {"run": {}, "history": [], "summary": {}, "artifacts": []}
    for rec in _records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            config = {i.key: json.loads(i.value_json) for i in r.config.update}
            out["run"] = {"group": r.run_group, "job_type": r.job_type, "tags": list(r.tags), "config": config}
            out["run"]["id"], out["run"]["name"] = r.run_id, r.display_name
            out["run"]["config_keys"] = set(config)
        elif kind == "history":
            row = {i.key or "/".join(i.nested_key): i.value_json for i in rec.history.item}
            out["history"].append(row | {"_step": rec.history.step.num})
        elif kind == "artifact":
            a = rec.artifact
            out["artifacts"].append({"name": a.name, "type": a.type, "files": [m.path for m in a.manifest.contents]})
        elif kind == "summary":
            out["summary"].update({i.key: i.value_json for i in rec.summary.update if i.key})
    return out
