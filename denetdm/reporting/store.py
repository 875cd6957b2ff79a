"""The results store: one compact record per finished run, committed under results/ so that every number in the
docs can be checked and regenerated after the run directories are gone.

`python sweep.py export <run or sweep dirs> --to results/<name>` writes `<id>.record.json` per finished run:
results.json without its resolved config, of which it keeps the part that can change numbers (the fingerprint),
plus the per-epoch curves of a few keys. `collect` (denetdm.reporting.runs) reads records like run directories, so
`sweep.py table results/...` and `sweep.py report` work on the store.
"""

import hashlib
import json
import math
from pathlib import Path

from denetdm.errors import DataError
from denetdm.files.atomic import atomic_write
from denetdm.fingerprint import fingerprint, last_phase

FORMAT = 1  # bump when a record's layout changes, and re-export the store
SUFFIX = ".record.json"
# per head and phase, the curves a record keeps (accuracies to 1e-4, i.e. 0.01 points)
CURVE_METRICS = (
    *("val/acc", "val/acc_unbiased", "val/acc_conflicting", "val/pred_entropy"),
    *("test/acc_unbiased", "test/acc_conflicting", "test/acc_aligned"),  # aligned: a collapsed expert shows there
    *("probe/y", "probe/b"),  # linear probes (probe.every): null at the epochs without one
)


def record(results: dict, epochs: list[dict], source: str) -> dict:
    """A run's record: results.json with `config` cut to its fingerprint, the curves, where it was exported from."""
    out = {k: v for k, v in results.items() if k != "config"}
    config = results.get("config") or {}
    out["config"] = fingerprint(config, last_phase(config, results.get("stages")))
    out.setdefault("provenance", {"commit": "unknown", "machine": "unknown"})
    out |= {"format": FORMAT, "source": source, "curves": curves(epochs)}
    return out


def _kept(key: str, value) -> bool:
    parts = key.split("/")
    wanted = key.endswith("/train/loss") or (len(parts) == 4 and "/".join(parts[2:]) in CURVE_METRICS)
    return wanted and isinstance(value, int | float)


def curves(epochs: list[dict]) -> dict[str, list]:
    """`<phase>/<head>/<split>/<metric>` (CURVE_METRICS) and `<phase>/train/loss` per epoch, epoch 1 first; null
    where an epoch lacks the key (a probe's, or a non-finite value)."""
    values: dict[str, dict[int, float | None]] = {}
    last: dict[str, int] = {}  # each phase's last epoch
    for rec in sorted(epochs, key=lambda r: (str(r.get("stage")), r.get("epoch", 0))):
        stage, epoch = str(rec.get("stage")), rec.get("epoch", 0)
        last[stage] = max(last.get(stage, 0), epoch)
        for key, value in rec.items():
            if _kept(key, value):
                values.setdefault(key, {})[epoch] = round(value, 4) if math.isfinite(value) else None
    return {key: [v.get(e) for e in range(1, last[key.split("/")[0]] + 1)] for key, v in values.items()}


def record_id(rec: dict) -> str:
    """The record's file name stem: a digest of its fingerprint (config, seed, selection), so re-exporting the
    same run replaces its record."""
    return hashlib.sha256(json.dumps(rec["config"], sort_keys=True).encode()).hexdigest()[:16]


def write(rec: dict, store: Path) -> bool:
    """Write `rec` into `store`; False when an identical record was already there."""
    path = store / f"{record_id(rec)}{SUFFIX}"
    if path.exists() and json.loads(path.read_text()) == json.loads(json.dumps(rec)):
        return False
    with atomic_write(path) as f:  # a key per line, each value on one line: readable and a few kB
        # keys sorted, except inside `config`, whose method phases keep the order they run in (the fingerprint's)
        lines = (f"{json.dumps(k)}: {json.dumps(v, sort_keys=k != 'config')}" for k, v in sorted(rec.items()))
        f.write("{\n" + ",\n".join(lines))
        f.write("\n}\n")
    return True


def read(path: Path) -> dict:
    """A record, checked for a format this code reads."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is not a readable store record ({e}); restore it: git checkout {path}") from None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        found = rec.get("format") if isinstance(rec, dict) else None
        raise DataError(
            f"{path} has store format {found!r}; this code reads format {FORMAT}: re-export it with `sweep.py "
            "export` from its run directory, or use the denetdm version that wrote it"
        )
    return rec


def epochs_of(rec: dict) -> list[dict]:
    """The stored curves as per-epoch records (`stage`, `epoch`, the keys), like metrics.jsonl's: a key is absent
    at an epoch without a value (no probe, or not finite)."""
    rows: dict[tuple[str, int], dict] = {}
    for key, values in (rec.get("curves") or {}).items():
        stage = key.split("/")[0]
        for epoch, value in enumerate(values, 1):
            row = rows.setdefault((stage, epoch), {"stage": stage, "epoch": epoch})
            if value is not None:
                row[key] = value
    return [rows[k] for k in sorted(rows)]
