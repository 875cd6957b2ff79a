"""BFFHQ (docs/protocols.md §5): target = age (young 0 / old 1), bias = gender, labels in the file names.

Both distributed layouts are read, from a folder or a zip:
  <top>/0.5pct/{align,conflict}/<class>/<id>_<target>_<bias>.<ext>, <top>/valid/*, <top>/test/*
  <top>/train/{align,conflict}/<class>/<id>_<target>_<bias>.<ext>,  <top>/valid/*, <top>/test/*
Images are decoded once, resized to `image_size` and cached.
"""

import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from denetdm.checks import path_text
from denetdm.data.base import CropFlipImages
from denetdm.data.sources import ImageTree
from denetdm.errors import ConfigError, DataError

log = logging.getLogger(__name__)

NAME = re.compile(r"^(?P<id>.+)_(?P<target>[01])_(?P<bias>[01])$")


def split_of(path: str) -> str | None:
    """'train', 'val' or 'test' for a file of either layout, None for anything else."""
    parts = PurePosixPath(path).parts[:-1]
    if ("align" in parts or "conflict" in parts) and ("train" in parts or any(p.endswith("pct") for p in parts)):
        return "train"
    if "valid" in parts:
        return "val"
    if "test" in parts:
        return "test"
    return None


def parse_labels(path: str) -> tuple[int, int]:
    """(target, bias) from `<id>_<target>_<bias>.<ext>`, or a DataError naming the file."""
    m = NAME.match(PurePosixPath(path).stem)
    if not m:
        raise DataError(f"BFFHQ file name {path} is not <id>_<target>_<bias>.<ext> with 0/1 labels")
    return int(m["target"]), int(m["bias"])


class BFFHQ(CropFlipImages):
    """Biased FFHQ from a folder or zip in either layout; images cached at `image_size`."""

    num_classes = num_biases = 2
    CONFLICT_PCT = 0.5  # fixed by the release

    def __init__(self, root: str | None, image_size: int = 224, conflict_pct: float = CONFLICT_PCT, **kwargs) -> None:
        super().__init__(**kwargs)
        if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 8:
            raise ConfigError(f"dataset.image_size must be an integer >= 8, got {image_size!r}")
        if conflict_pct != self.CONFLICT_PCT:
            raise ConfigError(
                f"dataset.conflict_pct is fixed by the BFFHQ release at {self.CONFLICT_PCT} %, got {conflict_pct!r}; "
                "leave it out (it is recorded for tags and tables)"
            )
        self.root, self.image_size = path_text("dataset.root", root, allow_none=True), image_size

    def _tree(self) -> ImageTree:
        if not self.root:
            raise DataError("dataset=bffhq needs dataset.root=<BFFHQ folder or .zip> (layouts: docs/protocols.md §5)")
        return ImageTree(self.root)

    def params(self) -> dict:
        """Every parameter the cached bytes depend on."""
        return {"protocol": "bffhq-v1", "image_size": self.image_size}

    def source_files(self) -> dict[str, Path]:
        """The folder's or the zip's files."""
        return self._tree().source_files()

    def build(self) -> dict[str, torch.Tensor]:
        """Decode, resize and label every image of the three splits."""
        tree = self._tree()
        files: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        for f in tree.files:
            split = split_of(f)
            if split is not None:
                files[split].append(f)
        out = {}
        t0 = time.time()
        for split, names in files.items():
            if not names:
                folder = (
                    "{0.5pct,train}/{align,conflict}/<class>"
                    if split == "train"
                    else ("valid" if split == "val" else "test")
                )
                raise DataError(f"BFFHQ split '{split}' is empty: no images under <top>/{folder}/ in {tree.path}")
            labels = np.array([parse_labels(n) for n in names], dtype=np.int64)
            with ThreadPoolExecutor(self.workers) as pool:  # PIL decodes without the GIL
                images = np.stack(list(pool.map(lambda n: tree.read(n, self.image_size), names)))
            out[f"{split}_x"] = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
            out[f"{split}_y"], out[f"{split}_b"] = torch.from_numpy(labels[:, 0]), torch.from_numpy(labels[:, 1])
        log.info(
            "decoded BFFHQ (%s) in %.1f s", ", ".join(f"{k}: {len(v)}" for k, v in files.items()), time.time() - t0
        )
        return out

    def info(self, splits: dict) -> dict:
        """Image size and the measured share of conflicting training samples."""
        train = splits["train"]
        return {
            "image_size": self.image_size,
            "conflict_pct": round(float((train.y != train.b).float().mean() * 100), 3),
        }
