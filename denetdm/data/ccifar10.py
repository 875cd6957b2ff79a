"""Corrupted CIFAR-10 (LfF protocol, docs/protocols.md §4): bias = corruption type, generated once and cached."""

import logging
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from denetdm.checks import flag, path_text
from denetdm.data.base import CropFlipImages, LffDataset
from denetdm.data.corruptions import TYPES, corrupt_chunk
from denetdm.data.sources import ImageTree, class_tree_split
from denetdm.errors import ConfigError, DataError
from denetdm.seeding import derive_seed

log = logging.getLogger(__name__)

CHUNK = 250  # images per task: the unit of parallel work and of random streams (results do not depend on workers)
TORCHVISION_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
PROTOCOL_VERSION = 2  # 1: our own approximations of the corruptions; 2: the reference's arithmetic (new cache)


def corrupt_all(
    images: np.ndarray, biases: np.ndarray, kind: int, level: int, seed: int, label: str, workers: int
) -> np.ndarray:
    """Corrupt every image by its bias label, in parallel chunks with a progress bar."""
    tasks = [
        (images[i : i + CHUNK], biases[i : i + CHUNK], kind, level, derive_seed(seed, f"{label}-chunk{i // CHUNK}"))
        for i in range(0, len(images), CHUNK)
    ]
    results: list[np.ndarray] = []
    progress = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        progress = tqdm(total=len(images), desc=f"corrupting {label}", unit="img")
    t0 = time.time()
    if workers > 1:
        # spawn, not fork: a fork of a process whose torch/OpenMP threads already ran can deadlock
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for out in pool.map(corrupt_chunk, tasks):
                results.append(out)
                if progress is not None:
                    progress.update(len(out))
    else:
        for task in tasks:
            results.append(corrupt_chunk(task))
            if progress is not None:
                progress.update(len(results[-1]))
    if progress is not None:
        progress.close()
    log.info("corrupted %d %s images in %.1f s (%d workers)", len(images), label, time.time() - t0, workers)
    return np.concatenate(results) if results else images[:0]


# CIFAR-10's classes in label order (torchvision's CIFAR10.classes)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class CorruptedCIFAR10(CropFlipImages, LffDataset):
    """Corrupted CIFAR-10: class = target, corruption type = bias (Type0 or Type1)."""

    def __init__(
        self, root: str, source: str | None = None, corruption_type: int = 0, download: bool = True, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        if corruption_type not in TYPES:
            raise ConfigError(f"dataset.corruption_type must be 0 or 1, got {corruption_type!r}")
        self.source = path_text("dataset.source", source, allow_none=True)
        self.root = root if self.source else path_text("data_root", root)  # the root is read without a source
        self.download = flag("dataset.download", download)
        self.level, self.kind = min(self.severity + 1, 5), corruption_type
        self.num_biases = len(TYPES[corruption_type])

    def label_names(self) -> tuple[list[str], list[str]]:
        """CIFAR-10's classes and the corruptions of this type."""
        return list(CLASSES), [fn.__name__ for fn in TYPES[self.kind]]

    def _source(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self.source:
            tree = ImageTree(self.source)
            x_tr, y_tr, classes = class_tree_split(tree, "train")
            x_te, y_te, classes_te = class_tree_split(tree, "test")
            if classes != classes_te or len(classes) != self.num_classes:
                raise DataError(
                    f"{self.source}: expected the same 10 class folders in train/ and test/, "
                    f"got {classes} and {classes_te}"
                )
            return x_tr, y_tr, x_te, y_te
        import torchvision

        root = Path(self.root).expanduser()
        try:
            train = torchvision.datasets.CIFAR10(str(root), train=True, download=self.download)
            test = torchvision.datasets.CIFAR10(str(root), train=False, download=self.download)
        except Exception as e:
            how = "and the download failed" if self.download else "and dataset.download=false"
            raise DataError(
                f"CIFAR-10 not found in {root / 'cifar-10-batches-py'} {how} ({type(e).__name__}); put it there, "
                "or give an image tree with dataset.source=<folder or .zip> (layout <top>/{train,test}/<class>/<file>)"
            ) from None
        return train.data, np.array(train.targets), test.data, np.array(test.targets)

    def source_files(self) -> dict[str, Path]:
        """The image tree's files, or torchvision's CIFAR-10 batches (downloaded first where allowed)."""
        if self.source:
            return ImageTree(self.source).source_files()
        folder = Path(self.root).expanduser() / "cifar-10-batches-py"
        if not all((folder / name).is_file() for name in TORCHVISION_FILES):
            self._source()  # downloads them, or says in one line where to put them
        return {name: folder / name for name in TORCHVISION_FILES}

    def params(self) -> dict:
        """Every parameter the generated bytes depend on."""
        return {
            "protocol": f"ccifar10-v{PROTOCOL_VERSION}",
            "type": self.kind,
            "level": self.level,
            "conflict_pct": self.conflict_pct,
            "val_size": self.val_size,
            "seed": self.seed,
        }

    def build(self) -> dict[str, torch.Tensor]:
        """Corrupt train (biased), validation and test (10 % aligned) splits."""
        out = {}
        for split, (x, y, b) in self.lff_splits(*self._source()).items():
            imgs = corrupt_all(x, b.numpy(), self.kind, self.level, self.seed, split, self.workers)
            out[f"{split}_x"] = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()
            out[f"{split}_y"], out[f"{split}_b"] = y, b
        return out

    def info(self, splits: dict) -> dict:
        """Severity, corruption level and type, ratio."""
        return {
            "severity": self.severity,
            "level": self.level,
            "corruption_type": self.kind,
            "conflict_pct": self.conflict_pct,
        }
