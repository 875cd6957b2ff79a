"""Generated datasets cached on disk, keyed by a hash of every generation parameter.

Files are written atomically and carry a digest of their tensors, so a damaged or truncated cache file is
detected and regenerated instead of silently used. The cache never lives inside the data root, which may
be read-only.
"""

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch

from denetdm.files.atomic import atomic_save
from denetdm.files.digest import tree_digest

log = logging.getLogger(__name__)


def cache_key(params: dict) -> str:
    """A stable hash of generation parameters."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    return tree_digest(tensors)


def cached(
    cache_dir: str | Path, prefix: str, params: dict, build: Callable[[], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Load the tensors generated with `params` from the cache, or build, store and return them."""
    path = Path(cache_dir).expanduser() / f"{prefix}-{cache_key(params)}.pt"
    if path.exists():
        try:
            blob = torch.load(path, weights_only=True)
            if blob["params"] == json.loads(json.dumps(params, default=str)) and blob["digest"] == _digest(
                blob["tensors"]
            ):
                return blob["tensors"]
            log.warning("cache file %s does not match its contents; regenerating it", path)
        except Exception as e:  # a damaged file: say so, then rebuild it
            log.warning("cache file %s is damaged (%s); regenerating it", path, type(e).__name__)
    tensors = build()
    blob = {"params": json.loads(json.dumps(params, default=str)), "tensors": tensors, "digest": _digest(tensors)}
    try:
        atomic_save(blob, path)
    except OSError as e:
        log.warning("could not write the dataset cache to %s (%s); set DENETDM_CACHE to a writable folder", path, e)
        return tensors
    total = sum(f.stat().st_size for f in _files(path.parent))
    log.info(
        "cached %s (%s; the cache holds %s: python -m denetdm.data.cache lists it, --clear empties it)",
        path,
        _size(path.stat().st_size),
        _size(total),
    )
    return tensors


def _files(folder: Path) -> list[Path]:
    """The cache files in a folder (`<dataset>-<key>.pt`): nothing else there is touched."""
    return sorted(p for p in folder.glob("*-*.pt") if re.fullmatch(r".+-[0-9a-f]{20}\.pt", p.name))


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def main(argv: list[str] | None = None) -> None:
    """`python -m denetdm.data.cache [--clear] [folder]`: the generated datasets cached there, and emptying it."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("folder", nargs="?", default=os.environ.get("DENETDM_CACHE", "~/.cache/denetdm"))
    ap.add_argument("--clear", action="store_true", help="delete the cache files (they are made again when needed)")
    args = ap.parse_args(argv)
    folder = Path(args.folder).expanduser()
    files = _files(folder) if folder.is_dir() else []
    for f in files:
        print(f"{_size(f.stat().st_size):>10}  {f.name}")
    total = sum(f.stat().st_size for f in files)
    if args.clear:
        for f in files:
            f.unlink()
    print(f"{len(files)} cache files, {_size(total)} in {folder}" + (": deleted" if args.clear else ""))


if __name__ == "__main__":
    main()
