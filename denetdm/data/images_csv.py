"""Your own biased dataset: a folder or a .zip of images and a metadata table naming, per image, its file, class,
bias attribute and split (the form of SubpopBench's and Group DRO's `metadata.csv`; docs/data.md).

Classes are the distinct values of the target column, in order (numbers by value); a bias value counts as aligned
with the class `aligned` maps it to (by default the class with the same value), so `y != b` marks the
bias-conflicting samples as for the built-in datasets. Images are decoded once, resized to `image_size`, and
cached; they are decoded straight into one uint8 tensor per split, so the decoded images are held once.
"""

import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from hashlib import sha256
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from denetdm.checks import image_size as check_image_size
from denetdm.checks import images_fit, number, path_text
from denetdm.data.base import CropFlipImages
from denetdm.data.sources import ImageTree
from denetdm.data.tables import TableSpec, join_tables, read_table
from denetdm.errors import ConfigError, DataError

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
COLUMNS = ("file", "target", "bias", "split")


def _plain(node: object) -> object:
    return OmegaConf.to_container(node) if isinstance(node, DictConfig | ListConfig) else node


def _ordered(values: set[str]) -> list[str]:
    """Values in order: by number when every one is a number, else as text."""
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


class ImagesCsv(CropFlipImages):
    """Images named by a metadata table; presets (conf/dataset/celeba.yaml, waterbirds.yaml) give the layouts."""

    def __init__(
        self,
        root: str | None,
        tables: list,
        columns: dict,
        splits: dict,
        aligned: dict | None = None,
        images: str | None = None,
        image_size: int = 64,
        conflict_pct: float | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        image_size = check_image_size(image_size)
        if conflict_pct is not None:  # a label; null: the data's own ratio
            number("dataset.conflict_pct", conflict_pct, high=100)
        tables, columns, splits, aligned = (_plain(v) for v in (tables, columns, splits, aligned))
        if not isinstance(tables, list) or not tables:
            raise ConfigError(
                f"dataset.tables must be a list of metadata tables ({{path, sep, skip, names}}), got {tables!r}"
            )
        self.specs = [TableSpec.parse(t, i) for i, t in enumerate(tables)]
        self.columns = _check_columns(columns)
        self.splits = _check_splits(splits)
        if aligned is not None and not isinstance(aligned, dict):
            raise ConfigError(f"dataset.aligned must map bias values to class values, or be null, got {aligned!r}")
        self.aligned = None if aligned is None else {str(k): str(v) for k, v in aligned.items()}
        self.root = path_text("dataset.root", root, allow_none=True)
        self.images = path_text("dataset.images", images, allow_none=True)
        self.image_size, self.conflict_pct = image_size, conflict_pct

    @functools.cached_property
    def tree(self) -> ImageTree:
        if not self.root:
            raise DataError(f"dataset={self.name} needs dataset.root=<folder or .zip of its images> (docs/data.md)")
        return ImageTree(self.root)

    @functools.cached_property
    def top(self) -> str:
        """The folder a zip holds everything in (`birds.zip` with `birds/...`), as a prefix; "" for none."""
        if self.tree.zip is None:
            return ""
        names = [n for n in self.tree.zip.namelist() if not n.endswith("/")]
        tops = {n.split("/", 1)[0] for n in names}
        return f"{tops.pop()}/" if len(tops) == 1 and all("/" in n for n in names) else ""

    def _table_text(self, spec: TableSpec) -> str:
        """A table's text: a member of the zip, a file below the folder, or an absolute path."""
        try:
            if Path(spec.path).is_absolute():
                return Path(spec.path).read_text()
            return self.tree.read_text(self.top + spec.path)
        except (OSError, KeyError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read the metadata table {spec.path} of {self.tree.path} ({e})") from None

    @functools.cached_property
    def index(self) -> dict:
        """{split: (files, class indices, bias indices)} and the classes, from the tables (read at every load: the
        class count is needed before the cache is)."""
        rows = join_tables(
            [(s, read_table(self._table_text(s), s, self.columns["file"])) for s in self.specs], self.columns["file"]
        )
        if not rows:
            raise DataError(f"the metadata tables of {self.tree.path} have no rows")
        out = label_rows(rows, self.columns, self.splits, self.aligned)
        if prefix := self.top + (f"{self.images}/" if self.images else ""):
            out |= {s: ([prefix + f for f in out[s][0]], *out[s][1:]) for s in SPLITS}
        if missing := [f for s in SPLITS for f in out[s][0] if not self.tree.has(f)]:
            raise DataError(
                f"{len(missing)} files the metadata names are not in {self.tree.path} (the first: {missing[0]}); "
                "check dataset.images (the folder the file column is relative to)"
            )
        return out

    @property
    def num_classes(self) -> int:  # from the table, before the cache
        return len(self.index["classes"])

    num_biases = num_classes

    def params(self) -> dict:
        """Every parameter the cached bytes depend on."""
        index = sha256(repr({s: self.index[s] for s in SPLITS}).encode()).hexdigest()[:20]
        return {"protocol": "images-csv-v1", "image_size": self.image_size, "index": index}

    def source_files(self) -> dict[str, Path]:
        """The tables and images (a zip: the archive itself)."""
        files = {f"table:{s.path}": Path(s.path) for s in self.specs if Path(s.path).is_absolute()}
        if self.tree.zip is not None:
            return files | self.tree.source_files()
        named = [f for s in SPLITS for f in self.index[s][0]]
        tables = [s.path for s in self.specs if not Path(s.path).is_absolute()]
        return files | {n: self.tree.path / n for n in [*tables, *named]}

    def build(self) -> dict[str, torch.Tensor]:
        """Decode and resize every image the table names, straight into one uint8 tensor per split."""
        out, t0, size = {}, time.time(), self.image_size
        images_fit(sum(len(self.index[s][0]) for s in SPLITS), size)
        for split in SPLITS:
            files, y, b = self.index[split]
            x = torch.empty((len(files), 3, size, size), dtype=torch.uint8)

            def put(i: int, x: torch.Tensor = x, files: list = files) -> None:
                x[i] = torch.from_numpy(self.tree.read(files[i], size)).permute(2, 0, 1)

            with ThreadPoolExecutor(self.workers) as pool:  # PIL decodes without the GIL
                list(pool.map(put, range(len(files))))
            out |= {f"{split}_x": x, f"{split}_y": torch.tensor(y), f"{split}_b": torch.tensor(b)}
        log.info(
            "decoded %d images of %s in %.1f s", sum(len(self.index[s][0]) for s in SPLITS), self.name, time.time() - t0
        )
        return out

    def label_names(self) -> tuple[list[str], list[str]]:
        """The table's class values and the bias values aligned with each class, with their columns' names."""
        target, bias = self.columns["target"], self.columns["bias"]
        return [f"{target}={c}" for c in self.index["classes"]], [f"{bias}={v}" for v in self.index["biases"]]

    def info(self, splits: dict) -> dict:
        """Image size, classes, the measured share of conflicting training samples and the (class, bias) cells."""
        classes = self.index["classes"]
        cells = {name: _cells(s.y, s.b, len(classes)) for name, s in splits.items()}
        for name, table in cells.items():
            log.info("%s (class x bias, classes %s):\n%s", name, classes, "\n".join(map(_row, table)))
        train = splits["train"]
        pct = round(float((train.y != train.b).float().mean() * 100), 3)
        return {"image_size": self.image_size, "classes": classes, "conflict_pct": pct, "cells": cells}


def label_rows(rows: list[dict], columns: dict, splits: dict, aligned: dict | None) -> dict:
    """{split: (files, class indices, bias indices)} and {"classes": [...]} from the joined table rows."""
    for key, col in columns.items():
        if col not in rows[0]:
            raise DataError(
                f"the metadata has no column {col!r} (dataset.columns.{key}); its columns: {', '.join(rows[0])}"
            )
    by_split = _assign_splits(rows, columns["split"], splits)
    classes = _ordered({r[columns["target"]] for r in rows})
    if len(classes) < 2:
        col = columns["target"]
        raise DataError(f"the metadata's {col!r} column has one class ({classes[0]}): a classifier needs two")
    bias_class = _bias_classes(rows, columns["bias"], classes, aligned)
    _check_training_values(by_split["train"], columns, classes, bias_class)
    index = {c: i for i, c in enumerate(classes)}
    out: dict = {"classes": classes, "biases": ["/".join(v for v, c in bias_class.items() if c == k) for k in classes]}
    for split, members in by_split.items():
        y = [index[r[columns["target"]]] for r in members]
        b = [index[bias_class[r[columns["bias"]]]] for r in members]
        out[split] = ([r[columns["file"]] for r in members], y, b)
    return out


def _row(counts: list[int]) -> str:
    return " ".join(f"{n:7d}" for n in counts)


def _cells(y: torch.Tensor, b: torch.Tensor, k: int) -> list[list[int]]:
    counts = torch.bincount(y * k + b, minlength=k * k).view(k, k)
    return counts.tolist()


def _check_columns(columns: object) -> dict[str, str]:
    if not isinstance(columns, dict) or set(columns) != set(COLUMNS):
        raise ConfigError(
            f"dataset.columns must name the columns {', '.join(COLUMNS)} (and nothing else), got {columns!r}"
        )
    for key, col in columns.items():
        if not isinstance(col, str) or not col:
            raise ConfigError(f"dataset.columns.{key} must be a column name, got {col!r}")
    return dict(columns)


def _check_splits(splits: object) -> dict[str, list[str]]:
    """{split: the split column's values that mean it}; each of train, val, test needs at least one."""
    if not isinstance(splits, dict) or set(splits) != set(SPLITS):
        raise ConfigError(f"dataset.splits must map train, val and test to split-column values, got {splits!r}")
    out = {}
    for name, values in splits.items():
        values = values if isinstance(values, list) else [values]
        if not values or not all(isinstance(v, str | int) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"dataset.splits.{name} must be a split-column value or a list of them, got {values!r}")
        out[name] = [str(v) for v in values]
    return out


def _assign_splits(rows: list[dict], col: str, splits: dict[str, list[str]]) -> dict[str, list[dict]]:
    """The rows of each split; one error line for a split value no split takes."""
    owner = {v: name for name, values in splits.items() for v in values}
    out: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for row in rows:
        if row[col] not in owner:
            raise DataError(
                f"split value {row[col]!r} (column {col!r}) has no mapping in dataset.splits "
                f"({', '.join(f'{k}: {v}' for k, v in splits.items())}); add it to one of them"
            )
        out[owner[row[col]]].append(row)
    for name, members in out.items():
        if not members:
            raise DataError(f"the {name} split is empty: no row has a split value in {splits[name]}")
    return out


def _bias_classes(rows: list[dict], col: str, classes: list[str], aligned: dict | None) -> dict[str, str]:
    """{bias value: the class it is aligned with}."""
    values = _ordered({r[col] for r in rows})
    mapping = {v: v for v in values} if aligned is None else aligned
    for v, c in mapping.items():  # a typo in dataset.aligned is named as such
        if aligned is not None and v not in values:
            raise DataError(
                f"dataset.aligned names bias value {v!r}, which column {col!r} does not hold ({', '.join(values)})"
            )
        if aligned is not None and c not in classes:
            raise DataError(f"dataset.aligned maps bias value {v!r} to {c!r}, which is no class ({', '.join(classes)})")
    for v in values:
        if mapping.get(v) not in classes:
            raise DataError(
                f"bias value {v!r} is aligned with no class (classes: {', '.join(classes)}); "
                "set dataset.aligned: {<bias value>: <class value>, ...}"
            )
    return {v: mapping[v] for v in values}


def _check_training_values(train: list[dict], columns: dict, classes: list[str], bias_class: dict) -> None:
    """Every class and every bias value needs a training sample (a model cannot learn a class it never sees)."""
    seen_y = {r[columns["target"]] for r in train}
    seen_b = {r[columns["bias"]] for r in train}
    for what, values, seen in (("class", classes, seen_y), ("bias value", list(bias_class), seen_b)):
        if missing := [v for v in values if v not in seen]:
            raise DataError(f"{what} {missing[0]!r} has no training sample; drop its rows or fix the split column")
