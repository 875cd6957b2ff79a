"""The content digest that finds a damaged file (torch loads flipped bytes without complaint)."""

import hashlib


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
