"""Generated datasets cached on disk, keyed by a hash of every generation parameter.

Files are written atomically and carry a digest of their tensors, so a damaged or truncated cache file is
detected and regenerated instead of silently used. The cache never lives inside the data root, which may
be read-only.
"""

import hashlib
import json
import logging
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
