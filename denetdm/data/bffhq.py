"""BFFHQ (docs/protocols.md §5) and BAR: images whose labels are in their file names, `<id>_<target>_<bias>.<ext>`.

BFFHQ: target = age (young 0 / old 1), bias = gender; both distributed layouts are read, from a folder or a zip:
  <top>/0.5pct/{align,conflict}/<class>/<id>_<target>_<bias>.<ext>, <top>/valid/*, <top>/test/*
  <top>/train/{align,conflict}/<class>/<id>_<target>_<bias>.<ext>,  <top>/valid/*, <top>/test/*
BAR (Biased Action Recognition, 6 actions; the 1 % / 5 % release of the BiasEnsemble code, which the DeNetDM paper's
Table 2 follows): <top>/train/align/<class>/*, <top>/train/conflict/{1pct,5pct}/<class>/*, <top>/valid/<class>/*,
<top>/test/<class>/*; as that code reads it, a training image's bias is its class when aligned and the next class
((target + 1) mod 6) when conflicting, whatever its name says; valid and test keep the bias of their names.
Images are decoded once, resized to `image_size` and cached.
"""

import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from denetdm.checks import image_size as check_image_size
from denetdm.checks import images_fit, path_text
from denetdm.data.base import CropFlipImages
from denetdm.data.sources import ImageTree
from denetdm.errors import ConfigError, DataError

log = logging.getLogger(__name__)

NAME = re.compile(r"^(?P<id>.+)_(?P<target>[0-9]+)_(?P<bias>[0-9]+)$")


def split_of(path: str) -> str | None:
    """'train', 'val' or 'test' for a file of either BFFHQ layout, None for anything else."""
    parts = PurePosixPath(path).parts[:-1]
    if ("align" in parts or "conflict" in parts) and ("train" in parts or any(p.endswith("pct") for p in parts)):
        return "train"
    if "valid" in parts:
        return "val"
    if "test" in parts:
        return "test"
    return None


def parse_labels(path: str, classes: int = 2) -> tuple[int, int]:
    """(target, bias) from `<id>_<target>_<bias>.<ext>`, or a DataError naming the file."""
    m = NAME.match(PurePosixPath(path).stem)
    if not m or int(m["target"]) >= classes or int(m["bias"]) >= classes:
        raise DataError(f"file name {path} is not <id>_<target>_<bias>.<ext> with labels 0..{classes - 1}")
    return int(m["target"]), int(m["bias"])


class BFFHQ(CropFlipImages):
    """Biased FFHQ from a folder or zip in either layout; images cached at `image_size`."""

    num_classes = num_biases = 2
    RELEASE = "BFFHQ"
    CONFLICT_PCTS: tuple[float, ...] = (0.5,)  # fixed by the release
    TRAIN_FOLDERS = "{0.5pct,train}/{align,conflict}/<class>"  # for the error line of an empty split

    def __init__(self, root: str | None, image_size: int = 224, conflict_pct: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        image_size = check_image_size(image_size)
        if conflict_pct not in self.CONFLICT_PCTS or isinstance(conflict_pct, bool):
            pcts = " or ".join(f"{p:g}" for p in self.CONFLICT_PCTS)
            raise ConfigError(
                f"dataset.conflict_pct is fixed by the {self.RELEASE} release at {pcts} %, got {conflict_pct!r}"
                + ("; leave it out (it is recorded for tags and tables)" if len(self.CONFLICT_PCTS) == 1 else "")
            )
        self.root, self.image_size = path_text("dataset.root", root, allow_none=True), image_size
        self.conflict_pct = conflict_pct

    def label_names(self) -> tuple[list[str], None]:
        """The target: age (young 0, old 1)."""
        return ["young", "old"], None

    def _tree(self) -> ImageTree:
        if not self.root:
            raise DataError(f"dataset={self.name} needs dataset.root=<its folder or .zip> (layouts: docs/data.md)")
        return ImageTree(self.root)

    def params(self) -> dict:
        """Every parameter the cached bytes depend on."""
        return {"protocol": "bffhq-v1", "image_size": self.image_size}

    def source_files(self) -> dict[str, Path]:
        """The folder's or the zip's files."""
        return self._tree().source_files()

    def split_of(self, path: str) -> str | None:
        """The split a file belongs to (None: not part of this dataset)."""
        return split_of(path)

    def labels(self, path: str, split: str) -> tuple[int, int]:
        """(target, bias) of a file."""
        return parse_labels(path, self.num_classes)

    def build(self) -> dict[str, torch.Tensor]:
        """Decode, resize and label every image of the three splits."""
        tree = self._tree()
        files: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        for f in tree.files:
            split = self.split_of(f)
            if split is not None:
                files[split].append(f)
        out = {}
        t0 = time.time()
        images_fit(sum(map(len, files.values())), self.image_size)
        for split, names in files.items():
            if not names:
                folder = self.TRAIN_FOLDERS if split == "train" else ("valid" if split == "val" else "test")
                raise DataError(f"{self.name} split '{split}' is empty: no images under <top>/{folder}/ in {tree.path}")
            labels = np.array([self.labels(n, split) for n in names], dtype=np.int64)
            with ThreadPoolExecutor(self.workers) as pool:  # PIL decodes without the GIL
                images = np.stack(list(pool.map(lambda n: tree.read(n, self.image_size), names)))
            out[f"{split}_x"] = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
            out[f"{split}_y"], out[f"{split}_b"] = torch.from_numpy(labels[:, 0]), torch.from_numpy(labels[:, 1])
        log.info(
            "decoded %s (%s) in %.1f s",
            self.name,
            ", ".join(f"{k}: {len(v)}" for k, v in files.items()),
            time.time() - t0,
        )
        return out

    def info(self, splits: dict) -> dict:
        """Image size and the measured share of conflicting training samples."""
        train = splits["train"]
        return {
            "image_size": self.image_size,
            "conflict_pct": round(float((train.y != train.b).float().mean() * 100), 3),
        }


class BAR(BFFHQ):
    """Biased Action Recognition at 1 or 5 % conflicting training images (the BiasEnsemble release's layout)."""

    num_classes = num_biases = 6
    RELEASE = "BAR"
    CONFLICT_PCTS = (1, 5)
    TRAIN_FOLDERS = "train/{align,conflict/<pct>}/<class>"

    def params(self) -> dict:
        """Every parameter the cached bytes depend on."""
        return {"protocol": "bar-v1", "image_size": self.image_size, "conflict_pct": self.conflict_pct}

    def split_of(self, path: str) -> str | None:
        """train/align and this ratio's train/conflict/<pct>pct are training images; valid, test the others."""
        parts = PurePosixPath(path).parts[:-1]
        if "train" in parts:
            at = parts.index("train")
            if parts[at + 1 : at + 2] == ("align",):
                return "train"
            return "train" if parts[at + 1 : at + 3] == ("conflict", f"{self.conflict_pct:g}pct") else None
        return "val" if "valid" in parts else ("test" if "test" in parts else None)

    def labels(self, path: str, split: str) -> tuple[int, int]:
        """The name's labels; a training image's bias from its folder, as the BiasEnsemble code sets it."""
        target, bias = parse_labels(path, self.num_classes)
        if split == "train":
            aligned = "align" in PurePosixPath(path).parts
            bias = target if aligned else (target + 1) % self.num_classes
        return target, bias
