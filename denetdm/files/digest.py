"""Content digests: the one that finds a damaged file (torch loads flipped bytes without complaint), and the one
that names a dataset's source files."""

import hashlib
from pathlib import Path


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


def files_digest(files: dict[str, Path]) -> str:
    """sha256 of files by name and contents (a dataset's source: its identity, 0.1 s for MNIST's 55 MB); where the
    files lie is left out, so moving them changes nothing."""
    h = hashlib.sha256()
    for name in sorted(files):
        with open(files[name], "rb") as f:
            h.update(f"{name}:{hashlib.file_digest(f, 'sha256').hexdigest()}\n".encode())
    return h.hexdigest()
