"""Corrupted CIFAR-10 (LfF protocol, PROTOCOLS section 4): bias = corruption type, generated once and cached."""

import logging
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from denetdm.data.augment import BatchAugment
from denetdm.data.bias import check_conflict_pct, lff_splits
from denetdm.data.cache import cached
from denetdm.data.corruptions import TYPES, corrupt_chunk
from denetdm.data.sources import ImageTree, class_tree_split
from denetdm.data.splits import BiasedData, splits_from
from denetdm.errors import ConfigError, DataError
from denetdm.seeding import derive_seed, generator

log = logging.getLogger(__name__)

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CHUNK = 250  # images per task: the unit of parallel work and of random streams (results do not depend on workers)
PROTOCOL_VERSION = 1


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


class CorruptedCIFAR10:
    """Corrupted CIFAR-10: class = target, corruption type = bias (Type0 or Type1)."""

    num_classes = 10

    def __init__(
        self,
        name: str,
        root: str,
        severity: int,
        conflict_pct: float,
        val_size: int,
        seed: int,
        cache_dir: str,
        source: str | None = None,
        corruption_type: int = 0,
        download: bool = True,
        workers: int | None = None,
        subset: int | None = None,
        eval_subset: int | None = None,
        augment: bool = True,
    ) -> None:
        if severity not in (1, 2, 3, 4, 5):
            raise ConfigError(f"severity must be 1..4 (corruption level severity+1), got {severity!r}")
        if corruption_type not in TYPES:
            raise ConfigError(f"dataset.corruption_type must be 0 or 1, got {corruption_type!r}")
        if not isinstance(val_size, int) or val_size < 1:
            raise ConfigError(f"dataset.val_size must be a positive integer, got {val_size!r}")
        self.name, self.root, self.source, self.download = name, root, source, download
        self.severity, self.level, self.kind = severity, min(severity + 1, 5), corruption_type
        self.conflict_pct = check_conflict_pct(conflict_pct)
        self.val_size, self.seed, self.cache_dir = val_size, int(seed), cache_dir
        self.workers = int(workers) if workers else (os.cpu_count() or 1)
        self.subset, self.eval_subset, self.augment = subset, eval_subset, augment

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

    def params(self) -> dict:
        """Every parameter the generated bytes depend on."""
        source = ImageTree(self.source).fingerprint() if self.source else "torchvision-cifar10"
        return {
            "protocol": f"ccifar10-v{PROTOCOL_VERSION}",
            "source": source,
            "type": self.kind,
            "level": self.level,
            "conflict_pct": self.conflict_pct,
            "val_size": self.val_size,
            "seed": self.seed,
        }

    def build(self) -> dict[str, torch.Tensor]:
        """Corrupt train (biased), validation and test (10 % aligned) splits."""
        x_tr, y_tr, x_te, y_te = self._source()
        num_biases = len(TYPES[self.kind])
        parts = lff_splits(x_tr, y_tr, x_te, y_te, self.conflict_pct, self.val_size, num_biases, self.seed)
        out = {}
        for split, (x, y, b) in parts.items():
            imgs = corrupt_all(x, b.numpy(), self.kind, self.level, self.seed, split, self.workers)
            out[f"{split}_x"] = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()
            out[f"{split}_y"], out[f"{split}_b"] = y, b
        return out

    def load(self) -> BiasedData:
        """The biased splits, from the cache when generated before."""
        t = cached(self.cache_dir, self.name, self.params(), self.build)
        split = splits_from(t)
        info = {
            "severity": self.severity,
            "level": self.level,
            "corruption_type": self.kind,
            "conflict_pct": self.conflict_pct,
        }
        fill = [-m / s for m, s in zip(MEAN, STD)]  # normalised zero: padding as if applied before normalising
        data = BiasedData(
            self.name, split["train"], split["val"], split["test"], self.num_classes, len(TYPES[self.kind]), info,
            normalize=(MEAN, STD), augment=BatchAugment(4, True, fill) if self.augment else None,
        )  # fmt: skip
        return data.subsets(self.subset, self.eval_subset, generator(self.seed, "subsets"))
