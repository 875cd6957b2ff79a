"""BFFHQ (PROTOCOLS section 5): target = age (young 0 / old 1), bias = gender, labels in the file names.

Both distributed layouts are read, from a folder or a zip:
  <top>/0.5pct/{align,conflict}/<class>/<id>_<target>_<bias>.<ext>, <top>/valid/*, <top>/test/*
  <top>/train/{align,conflict}/<class>/<id>_<target>_<bias>.<ext>,  <top>/valid/*, <top>/test/*
Images are decoded once, resized to `image_size` and cached.
"""

import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath

import numpy as np
import torch

from denetdm.data.augment import BatchAugment
from denetdm.data.cache import cached
from denetdm.data.ccifar10 import MEAN, STD
from denetdm.data.sources import ImageTree
from denetdm.data.splits import BiasedData, splits_from
from denetdm.errors import ConfigError, DataError
from denetdm.seeding import generator

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


class BFFHQ:
    """Biased FFHQ from a folder or zip in either layout; images cached at `image_size`."""

    num_classes = 2

    def __init__(
        self,
        name: str,
        root: str,
        seed: int,
        cache_dir: str,
        image_size: int = 224,
        workers: int | None = None,
        subset: int | None = None,
        eval_subset: int | None = None,
        augment: bool = True,
        **ignored: object,  # severity / conflict_pct of the shared config: fixed by the release (0.5 %)
    ) -> None:
        if not isinstance(image_size, int) or image_size < 8:
            raise ConfigError(f"dataset.image_size must be an integer >= 8, got {image_size!r}")
        self.name, self.root, self.seed, self.cache_dir = name, root, int(seed), cache_dir
        self.image_size = image_size
        self.workers = int(workers) if workers else (os.cpu_count() or 1)
        self.subset, self.eval_subset, self.augment = subset, eval_subset, augment

    def _tree(self) -> ImageTree:
        if not self.root:
            raise DataError("dataset=bffhq needs dataset.root=<BFFHQ folder or .zip> (see PROTOCOLS layouts)")
        return ImageTree(self.root)

    def params(self) -> dict:
        """Every parameter the cached bytes depend on."""
        return {"protocol": "bffhq-v1", "source": self._tree().fingerprint(), "image_size": self.image_size}

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

    def load(self) -> BiasedData:
        """The three splits, from the cache when decoded before."""
        t = cached(self.cache_dir, self.name, self.params(), self.build)
        split = splits_from(t)
        conflicting = float((split["train"].y != split["train"].b).float().mean() * 100)
        info = {"image_size": self.image_size, "conflict_pct": round(conflicting, 3)}
        fill = [-m / s for m, s in zip(MEAN, STD)]
        data = BiasedData(
            self.name, split["train"], split["val"], split["test"], 2, 2, info,
            normalize=(MEAN, STD), augment=BatchAugment(4, True, fill) if self.augment else None,
        )  # fmt: skip
        return data.subsets(self.subset, self.eval_subset, generator(self.seed, "subsets"))
