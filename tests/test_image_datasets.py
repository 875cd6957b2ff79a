"""Corrupted CIFAR-10 and BFFHQ on small generated image trees (folder and zip), end to end included."""

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from denetdm.data.bffhq import BAR, BFFHQ
from denetdm.data.ccifar10 import CorruptedCIFAR10
from denetdm.data.preview import main as preview_main
from denetdm.errors import ConfigError, DataError
from denetdm.training.pipeline import train

from conftest import COMMON, compose_cfg, read_results, run_cli

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _save(path: Path, rng: np.random.Generator, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def _zip(folder: Path) -> Path:
    return Path(shutil.make_archive(str(folder), "zip", folder.parent, folder.name))


@pytest.fixture(scope="module")
def cifar_tree(tmp_path_factory) -> Path:
    """<top>/{train,test}/<class>/NNNN.png: 40 train and 10 test images a class."""
    top = tmp_path_factory.mktemp("cifar") / "cifar10"
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 10)):
        for c in CLASSES:
            for i in range(n):
                _save(top / split / c / f"{i:04d}.png", rng, 32)
    return top


def _ccifar(source, cache, **kw):
    args = dict(
        name="ccifar10",
        root="/nonexistent",
        source=str(source),
        severity=4,
        conflict_pct=5,
        val_size=50,
        seed=0,
        cache_dir=str(cache),
        workers=2,
    )
    return CorruptedCIFAR10(**{**args, **kw})


@pytest.mark.slow
def test_ccifar10_protocol_counts_and_seeding(cifar_tree, tmp_path):
    a = _ccifar(cifar_tree, tmp_path / "a").load()
    assert (len(a.train), len(a.val), len(a.test)) == (350, 50, 100)
    assert abs(int((a.train.y != a.train.b).sum()) - 0.05 * 350) <= 5  # 5 %, up to per-class rounding
    assert int((a.test.y == a.test.b).sum()) == 10  # 10 % aligned
    assert a.train.x.dtype == torch.uint8 and a.train.x.shape[1:] == (3, 32, 32)
    assert a.normalize is not None and a.augment is not None
    zipped = _zip(cifar_tree)
    b = _ccifar(zipped, tmp_path / "b", workers=1).load()  # zip source, one process: the same bytes
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.b, b.test.b)
    c = _ccifar(cifar_tree, tmp_path / "c", seed=1).load()
    assert not torch.equal(a.train.x, c.train.x)
    t1 = _ccifar(cifar_tree, tmp_path / "t1", corruption_type=1).load()
    assert not torch.equal(a.test.x, t1.test.x)


def test_ccifar10_missing_source_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        _ccifar(tmp_path / "nowhere", tmp_path / "c").load()
    empty = tmp_path / "empty" / "train" / "cat"
    empty.mkdir(parents=True)
    with pytest.raises(DataError, match="no images under"):
        _ccifar(tmp_path / "empty", tmp_path / "c").load()


def _bffhq_tree(top: Path, layout: str, rng: np.random.Generator) -> Path:
    train = top / ("0.5pct" if layout == "a" else "train")
    n = 0
    for kind, count in (("align", 12), ("conflict", 4)):
        for target in (0, 1):
            for _ in range(count):
                bias = target if kind == "align" else 1 - target
                _save(train / kind / str(target) / f"{n}_{target}_{bias}.png", rng, 24)
                n += 1
    for split in ("valid", "test"):
        for target in (0, 1):
            for bias in (0, 1):
                for _ in range(3):
                    _save(top / split / f"{n}_{target}_{bias}.png", rng, 24)
                    n += 1
    return top


@pytest.mark.parametrize("layout", ["a", "b"])
@pytest.mark.parametrize("as_zip", [False, True])
def test_bffhq_both_layouts_from_folder_or_zip(tmp_path, layout, as_zip):
    top = _bffhq_tree(tmp_path / ("bffhq" if layout == "a" else "bFFHQ"), layout, np.random.default_rng(1))
    root = _zip(top) if as_zip else top
    data = BFFHQ(name="bffhq", root=str(root), seed=0, cache_dir=str(tmp_path / "cache"), image_size=16).load()
    assert (len(data.train), len(data.val), len(data.test)) == (32, 12, 12)
    assert int((data.train.y != data.train.b).sum()) == 8
    assert data.train.x.shape[1:] == (3, 16, 16) and data.num_classes == data.num_biases == 2


def test_bffhq_bad_names_and_empty_splits_are_named(tmp_path):
    top = _bffhq_tree(tmp_path / "bffhq", "a", np.random.default_rng(2))
    _save(top / "test" / "oops.png", np.random.default_rng(0), 8)
    with pytest.raises(DataError, match="oops.png"):
        BFFHQ(name="bffhq", root=str(top), seed=0, cache_dir=str(tmp_path / "c1"), image_size=16).load()
    (top / "test" / "oops.png").unlink()
    shutil.rmtree(top / "valid")
    with pytest.raises(DataError, match="'val' is empty"):
        BFFHQ(name="bffhq", root=str(top), seed=0, cache_dir=str(tmp_path / "c2"), image_size=16).load()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["denetdm", "dfa", "lc"])  # dfa: its Corrupted CIFAR-10 preset
def test_ccifar10_end_to_end_with_conv_experts(method, cifar_tree, tmp_path):
    args = [
        *COMMON,
        f"method={method}",
        "dataset=ccifar10",
        f"dataset.source={cifar_tree}",
        "dataset.val_size=50",
        "dataset.eval_subset=50",
        "experts.epochs=1",
        "target.epochs=1",
        "experts.batch_size=64",
        "target.batch_size=64",
    ]
    proc = run_cli(args, tmp_path / "r")
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = read_results(tmp_path / "r")
    assert r["config"]["model"]["deep"]["name"] == "resnet_cifar" and r["config"]["model"]["shallow"]["name"] == "cnn"
    assert 0 <= r["test/acc_unbiased"] <= 1 and ("stage1/shallow/test/acc_conflicting" in r) == (method == "denetdm")


def _bar_tree(top: Path, rng: np.random.Generator) -> Path:
    """BAR's release layout: train/align/<class>, train/conflict/{1pct,5pct}/<class>, valid/<class>, test/<class>;
    the training names carry a bias label the loader must overrule (9, as no class is)."""
    n = 0
    for folder, count in (("train/align", 10), ("train/conflict/1pct", 1), ("train/conflict/5pct", 3)):
        for target in range(6):
            for _ in range(count):
                _save(top / folder / f"c{target}" / f"{n}_{target}_{target}.jpg", rng, 24)
                n += 1
    for split in ("valid", "test"):
        for target in range(6):
            _save(top / split / f"c{target}" / f"{n}_{target}_{(target + 2) % 6}.jpg", rng, 24)
            n += 1
    return top


@pytest.mark.parametrize("pct, conflicting", [(1, 6), (5, 18)])
def test_bar_takes_its_ratios_conflict_folder_and_the_bias_its_code_sets(pct, conflicting, tmp_path):
    top = _bar_tree(tmp_path / "bar", np.random.default_rng(4))
    data = BAR(name="bar", root=str(_zip(top)), seed=0, cache_dir=str(tmp_path / "c"), image_size=16, conflict_pct=pct)
    data = data.load()
    assert (len(data.train), len(data.val), len(data.test)) == (60 + conflicting, 6, 6)
    conf = data.train.y != data.train.b
    assert int(conf.sum()) == conflicting
    assert torch.equal(data.train.b[conf], (data.train.y[conf] + 1) % 6)  # the next class, whatever the name says
    assert torch.equal(data.test.b, (data.test.y + 2) % 6)  # evaluation splits keep their names' bias
    with pytest.raises(ConfigError, match="fixed by the BAR release at 1 or 5 %"):
        BAR(name="bar", root=str(top), seed=0, cache_dir=str(tmp_path), conflict_pct=2)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["denetdm", "dfa", "lc"])
def test_bar_end_to_end(method, tmp_path):
    top = _bar_tree(tmp_path / "bar", np.random.default_rng(5))
    args = [
        *COMMON,
        f"method={method}",
        "dataset=bar",
        f"dataset.root={top}",
        "dataset.image_size=48",
        "dataset.conflict_pct=5",
    ]
    args += ["experts.epochs=1", "target.epochs=1", "experts.batch_size=16", "target.batch_size=16"]
    proc = run_cli([*args, "model.target.pretrained=false"], tmp_path / "r")
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = read_results(tmp_path / "r")
    assert (
        r["dataset"]["conflict_pct"] == pytest.approx(100 * 18 / 78, abs=1e-2) and "test/acc_conflicting_samples" in r
    )


@pytest.mark.slow
@pytest.mark.parametrize("method", ["denetdm", "dfa", "lc"])  # dfa: its BFFHQ preset (method_dataset/dfa_bffhq)
def test_bffhq_end_to_end(method, tmp_path):
    top = _bffhq_tree(tmp_path / "bffhq", "b", np.random.default_rng(3))
    args = [
        *COMMON,
        f"method={method}",
        "dataset=bffhq",
        f"dataset.root={top}",
        "dataset.image_size=48",
        "experts.epochs=1",
        "target.epochs=1",
        "experts.batch_size=16",
        "target.batch_size=16",
    ]
    proc = run_cli(args, tmp_path / "r")
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = read_results(tmp_path / "r")
    assert r["config"]["model"]["deep"]["name"] == "resnet" and "test/acc_conflicting_samples" in r
    assert method != "dfa" or r["config"]["method"]["phases"]["dfa"]["lambda_swap"] == 0.1  # its BFFHQ preset


def test_bffhq_without_root_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="dataset.root"):
        train(compose_cfg([*COMMON, "dataset=bffhq"]), tmp_path / "r")


def test_bffhq_refuses_arguments_it_would_ignore(tmp_path):
    args = dict(name="bffhq", root="x", seed=0, cache_dir=str(tmp_path))
    with pytest.raises(TypeError, match="severity"):  # run.py turns this into one line naming the argument
        BFFHQ(**args, severity=4)
    with pytest.raises(ConfigError, match="fixed by the BFFHQ release"):
        BFFHQ(**args, conflict_pct=1)
    with pytest.raises(ConfigError, match="cannot build denetdm.data.bffhq.BFFHQ.*severity"):
        train(compose_cfg([*COMMON, "dataset=bffhq", "dataset.root=x", "+dataset.severity=4"]), tmp_path / "r")


@pytest.mark.slow
def test_preview_writes_a_contact_sheet(tmp_path, capsys):
    out = tmp_path / "sheet.png"
    preview_main(
        [
            "dataset=synthetic",
            "dataset.train_size=600",
            "dataset.test_size=300",
            "dataset.val_size=50",
            "dataset.conflict_pct=5",
            "--out",
            str(out),
        ]
    )
    img = Image.open(out)
    assert img.size[0] > 10 * 64 and img.size[1] > 10 * 64  # 10 x 10 cells of 64 px
    assert "10 classes x 10 bias values" in capsys.readouterr().out
    assert len(np.unique(np.asarray(img).reshape(-1, 3), axis=0)) > 50  # images, not a blank page


def test_zip_source_reads_like_the_folder(cifar_tree):
    with zipfile.ZipFile(_zip(cifar_tree)) as z:
        assert sum(n.endswith(".png") for n in z.namelist()) == 500


def _zip_of(path, members: dict[str, bytes]) -> None:
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)


def _png(w: int, h: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "members,words",
    [
        ({"top/train/cat/../../../evil.png": b"x"}, "climbing out"),
        ({"/abs/train/cat/a.png": b"x"}, "climbing out"),
        ({"top/train/cat/bomb.png": bytes(50 << 20)}, "not an image archive"),  # 50 MB of zeros packs ~1000:1
    ],
)
def test_zip_members_that_climb_out_or_unpack_like_a_bomb_are_refused(members, words, tmp_path):
    from denetdm.data.sources import ImageTree
    from denetdm.errors import DataError

    _zip_of(tmp_path / "src.zip", members)
    with pytest.raises(DataError, match=words):
        ImageTree(tmp_path / "src.zip")


def test_a_source_that_is_not_a_zip_or_mixes_image_sizes_is_one_error(tmp_path):
    from denetdm.data.sources import ImageTree, class_tree_split
    from denetdm.errors import DataError

    (tmp_path / "fake.zip").write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="is not a readable zip"):
        ImageTree(tmp_path / "fake.zip")
    _zip_of(tmp_path / "mixed.zip", {"top/train/cat/a.png": _png(32, 32), "top/train/dog/b.png": _png(28, 30)})
    with pytest.raises(DataError, match="images of different sizes .* is 32x32, .* is 28x30"):
        class_tree_split(ImageTree(tmp_path / "mixed.zip"), "train")
