"""Your own data (dataset=images_csv) and its presets, CelebA and Waterbirds, on small trees drawn in each one's
exact layout: the tables, the cell table, training, resuming, and one line for each bad input."""

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from denetdm.errors import DataError
from denetdm.training.pipeline import train

from conftest import COMMON, ROOT, compose_cfg, read_results, run_cli

SMALL = ["backbone_depth=cnn3_resnet20", "dataset.image_size=32", "experts.batch_size=32", "target.batch_size=32"]


def _image(path: Path, rng: np.random.Generator, ok: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if ok:
        Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(path)
    else:
        path.write_bytes(b"not an image")


def _cells(n: int, rng: np.random.Generator, conflicting: float) -> list[tuple[int, int]]:
    """(class, bias) of n samples of two classes, `conflicting` of them with the other bias value."""
    y = rng.integers(0, 2, n)
    flip = rng.random(n) < conflicting
    return [(int(a), int(a ^ f)) for a, f in zip(y, flip)]


def celeba_tree(top: Path, n: int = 240, rng: np.random.Generator | None = None) -> Path:
    """img_align_celeba/NNNNNN.jpg, list_attr_celeba.txt (count, 40 names, -1/1 values), list_eval_partition.txt."""
    rng = rng or np.random.default_rng(0)
    names = [f"Attr{i}" for i in range(40)]
    names[9], names[20] = "Blond_Hair", "Male"
    attrs, parts = [str(n), " ".join(names)], []
    for i, (blond, female) in enumerate(_cells(n, rng, 0.1)):
        f = f"{i + 1:06d}.jpg"
        _image(top / "img_align_celeba" / f, rng)
        values = ["-1"] * 40
        values[9], values[20] = ("1" if blond else "-1"), ("-1" if female else "1")
        attrs.append(f"{f} " + " ".join(f"{v:>2}" for v in values))
        parts.append(f"{f} {0 if i < 0.7 * n else (1 if i < 0.85 * n else 2)}")
    (top / "list_attr_celeba.txt").write_text("\n".join(attrs) + "\n")
    (top / "list_eval_partition.txt").write_text("\n".join(parts) + "\n")
    return top


def waterbirds_tree(top: Path, n: int = 240, rng: np.random.Generator | None = None) -> Path:
    """metadata.csv (img_id, img_filename, y, split, place, place_filename) and <class folder>/<file>.jpg."""
    rng = rng or np.random.default_rng(1)
    lines = ["img_id,img_filename,y,split,place,place_filename"]
    for i, (y, place) in enumerate(_cells(n, rng, 0.05)):
        f = f"{'001.Black_footed_Albatross' if y else '002.Laysan_Albatross'}/bird_{i:04d}.jpg"
        _image(top / f, rng)
        lines.append(f"{i + 1},{f},{y},{0 if i < 0.7 * n else (1 if i < 0.85 * n else 2)},{place},/x/{i}.jpg")
    (top / "metadata.csv").write_text("\n".join(lines) + "\n")
    return top


def _zip(folder: Path, top: bool) -> Path:
    """The folder's contents zipped, at the archive's root or inside the folder's name (`top`)."""
    return Path(shutil.make_archive(str(folder), "zip", *((folder.parent, folder.name) if top else (folder,))))


@pytest.mark.parametrize("preset", ["celeba", "waterbirds"])
@pytest.mark.parametrize("as_zip", [None, "flat", "top"])
def test_presets_read_their_layouts_and_give_the_cell_table(preset, as_zip, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    top = (celeba_tree if preset == "celeba" else waterbirds_tree)(tmp_path / preset)
    root = _zip(top, as_zip == "top") if as_zip else top
    cfg = compose_cfg([*COMMON, *SMALL, f"dataset={preset}", f"dataset.root={root}"])
    from hydra.utils import instantiate

    dataset = instantiate(cfg.dataset)
    data = dataset.load()
    assert (len(data.train), len(data.val), len(data.test)) == (168, 36, 36)
    assert data.num_classes == data.num_biases == 2
    assert tuple(data.train.x.shape[1:]) == (3, 32, 32)
    info = data.info
    assert sum(map(sum, info["cells"]["train"])) == 168
    conflicting = sum(info["cells"]["train"][y][b] for y in range(2) for b in range(2) if y != b)
    assert info["conflict_pct"] == pytest.approx(100 * conflicting / 168, abs=1e-3)
    assert 0 < conflicting < 40  # the drawn ratio: 10 % (CelebA) or 5 % (Waterbirds), not its complement
    assert "train (class x bias" in caplog.text
    # the preview sheet's labels: the table's values with their columns' names, not indices
    names = {"celeba": (["Blond_Hair=-1", "Blond_Hair=1"], ["Male=1", "Male=-1"])}
    assert dataset.label_names() == names.get(preset, (["y=0", "y=1"], ["place=0", "place=1"]))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["denetdm", "erm", "lff", "jtt", "groupdro", "dfa", "lc"])
def test_every_method_trains_an_epoch_on_a_celeba_tree(method, tmp_path):
    top = celeba_tree(tmp_path / "celeba")
    args = [*COMMON, *SMALL, "dataset=celeba", f"dataset.root={top}", f"method={method}"]
    args += ["experts.epochs=1"] + (
        ["method.id_epochs=1", "method.upweight=2", "target.epochs=2"] if method == "jtt" else ["target.epochs=1"]
    )
    proc = run_cli(args, tmp_path / "r")
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = read_results(tmp_path / "r")
    assert "test/acc_worst_group" in r and r["dataset"]["name"] == "celeba"


@pytest.mark.slow
def test_a_waterbirds_run_resumes_to_the_uninterrupted_numbers(tmp_path):
    top = waterbirds_tree(tmp_path / "wb")
    args = [*COMMON, *SMALL, "dataset=waterbirds", f"dataset.root={top}", "experts.epochs=2", "target.epochs=2"]
    assert run_cli(args, tmp_path / "whole").returncode == 0
    cmd = [sys.executable, str(ROOT / "tests" / "faultinject.py"), "kill-after-epoch:stage2:1", str(ROOT / "run.py")]
    killed = subprocess.run([*cmd, *args, f"hydra.run.dir={tmp_path / 'cut'}"], cwd=ROOT, capture_output=True)
    assert killed.returncode != 0 and not (tmp_path / "cut" / "results.json").exists()
    assert run_cli(args, tmp_path / "cut").returncode == 0
    whole, cut = read_results(tmp_path / "whole"), read_results(tmp_path / "cut")
    assert cut["test/acc_unbiased"] == whole["test/acc_unbiased"]


def _edit(path: Path, row: int, column: int, value: str) -> None:
    """Set one field of metadata.csv (row 1: the first image)."""
    rows = [r.split(",") for r in path.read_text().splitlines()]
    rows[row][column] = value
    path.write_text("\n".join(",".join(r) for r in rows) + "\n")


BAD = {  # case: (overrides, (row, column, value) to write into metadata.csv, the words of the error line)
    "a missing column": (["dataset.columns.bias=habitat"], None, "no column 'habitat' \\(dataset.columns.bias\\)"),
    "a split value with no mapping": ([], (1, 3, "7"), "split value '7'"),
    "a missing file": ([], (2, 1, "nowhere/bird_9999.jpg"), "1 files the metadata names are not in"),
    "a duplicate file": ([], (3, 1, None), "lists .* twice"),
    "a bias value with no class": ([], (1, 4, "9"), "bias value '9' is aligned with no class"),
    "an image that does not decode": ([], None, "cannot read image .*bird_0003.jpg"),
    "a class name mistyped in aligned": (["dataset.aligned={0: 0, 1: sqare}"], None, "maps bias value '1' to 'sqare'"),
    "a bias value mistyped in aligned": (["dataset.aligned={blue: 0}"], None, "names bias value 'blue', which"),
    "images larger than the memory": (["dataset.image_size=100000"], None, "image_size=100000: 40 decoded images"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_clear_line(case, tmp_path):
    overrides, edit, words = BAD[case]
    top = waterbirds_tree(tmp_path / "wb", n=40)
    if edit:
        row, column, value = edit
        if value is None:  # the file of the row before
            value = (top / "metadata.csv").read_text().splitlines()[row - 1].split(",")[column]
        _edit(top / "metadata.csv", row, column, value)
    if case == "an image that does not decode":
        _image(next(top.rglob("bird_0003.jpg")), np.random.default_rng(), ok=False)
    cfg = compose_cfg([*COMMON, *SMALL, "dataset=waterbirds", f"dataset.root={top}", *overrides])
    with pytest.raises(DataError, match=words):
        train(cfg, tmp_path / "r")


def test_a_class_without_training_samples_is_one_clear_line(tmp_path):
    top = waterbirds_tree(tmp_path / "wb", n=40)
    rows = (top / "metadata.csv").read_text().splitlines()
    # every waterbird (y = 1) moved to the test split
    fixed = [rows[0]] + [
        ",".join(p[:3] + ["2"] + p[4:]) if p[2] == "1" else r for r, p in ((r, r.split(",")) for r in rows[1:])
    ]
    (top / "metadata.csv").write_text("\n".join(fixed) + "\n")
    cfg = compose_cfg([*COMMON, *SMALL, "dataset=waterbirds", f"dataset.root={top}"])
    with pytest.raises(DataError, match="class '1' has no training sample"):
        train(cfg, tmp_path / "r")


def test_a_table_of_one_class_is_one_clear_line(tmp_path):
    top = waterbirds_tree(tmp_path / "wb", n=40)
    rows = [r.split(",") for r in (top / "metadata.csv").read_text().splitlines()]
    rows[1:] = [p[:2] + ["0"] + p[3:] for p in rows[1:]]  # every bird a landbird (y = 0)
    (top / "metadata.csv").write_text("\n".join(map(",".join, rows)) + "\n")
    cfg = compose_cfg([*COMMON, *SMALL, "dataset=waterbirds", f"dataset.root={top}"])
    with pytest.raises(DataError, match="has one class \\(0\\): a classifier needs two"):
        train(cfg, tmp_path / "r")


@pytest.mark.slow  # trains
def test_subsets_a_biased_validation_hold_out_and_label_free_selection_work_as_for_built_in_data(tmp_path):
    top = waterbirds_tree(tmp_path / "wb")
    args = [*COMMON, *SMALL, "dataset=waterbirds", f"dataset.root={top}", "experts.epochs=1", "target.epochs=1"]
    args += ["dataset.subset=100", "dataset.biased_val_size=30", "selection=val_biased_nolabels"]
    results = train(compose_cfg(args), tmp_path / "r")
    assert results["selection"] == "val_biased_nolabels" and results["objective_key"].startswith("val_biased/")
    r = read_results(tmp_path / "r")
    assert sum(map(sum, r["dataset"]["cells"]["train"])) == 168  # the table as read, before subsets and hold-outs


def test_a_bias_value_without_training_samples_is_one_clear_line(tmp_path):
    top = waterbirds_tree(tmp_path / "wb", n=40)
    rows = [r.split(",") for r in (top / "metadata.csv").read_text().splitlines()]
    for r in rows[1:]:
        if r[3] == "0":  # every training bird on land
            r[4] = "0"
    (top / "metadata.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")
    cfg = compose_cfg([*COMMON, *SMALL, "dataset=waterbirds", f"dataset.root={top}"])
    with pytest.raises(DataError, match="bias value '1' has no training sample"):
        train(cfg, tmp_path / "r")
