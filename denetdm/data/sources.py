"""Image sources: class-folder trees in a folder or a zip (`<top>/{train,test}/<class>/<file>`)."""

import functools
import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from denetdm.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MAX_MEMBER = 64 << 20  # bytes an image may unpack to (a 4096 x 4096 RGB bitmap is 48 MiB)
MAX_RATIO = 200  # how many times larger than its packed size (a zip bomb packs far tighter than any image)


class ImageTree:
    """Read-only access to image files in a folder or a zip, by path relative to the root."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise DataError(f"image source {self.path} does not exist; give a folder or a .zip")
        self.zip = _open_zip(self.path) if self.path.is_file() else None
        if self.zip is not None:
            self.files = sorted(i.filename for i in _checked_members(self.zip, self.path))
        else:
            self.files = sorted(
                str(p.relative_to(self.path)) for p in self.path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
            )

    @functools.cached_property
    def _names(self) -> frozenset[str]:
        return frozenset(self.files)

    def has(self, name: str) -> bool:
        """Whether an image file of that relative path is there."""
        return name in self._names

    def read_text(self, name: str) -> str:
        """A text file (a metadata table) by relative path."""
        return self.zip.read(name).decode() if self.zip is not None else (self.path / name).read_text()

    def source_files(self) -> dict[str, Path]:
        """Its files by name for the data's digest (a zip: the archive itself)."""
        if self.zip is not None:
            return {"archive": self.path}
        return {name: self.path / name for name in self.files}

    def read(self, name: str, size: int | None = None) -> np.ndarray:
        """One image as uint8 (H, W, 3), resized to size x size when given."""
        try:
            data = self.zip.read(name) if self.zip is not None else (self.path / name).read_bytes()
            img = Image.open(io.BytesIO(data)).convert("RGB")
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            return np.array(img)  # writable: torch.from_numpy takes it without a warning
        except Exception as e:
            raise DataError(f"cannot read image {name} in {self.path} ({type(e).__name__}: {e})") from None


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"image source {path} is not a readable zip ({e}); give a folder or a .zip") from None


def _checked_members(archive: zipfile.ZipFile, path: Path) -> list[zipfile.ZipInfo]:
    """The image members, after refusing names that climb out of the archive and sizes no image has."""
    members = [i for i in archive.infolist() if i.filename.lower().endswith(IMAGE_SUFFIXES)]
    for i in members:
        name = Path(i.filename)
        if name.is_absolute() or ".." in name.parts or ":" in name.parts[0]:
            raise DataError(f"{path} holds a member named {i.filename!r} (absolute or climbing out): repack it")
        if i.file_size > MAX_MEMBER or i.file_size > MAX_RATIO * max(i.compress_size, 1):
            raise DataError(
                f"{path}: member {i.filename} unpacks to {i.file_size} bytes from {i.compress_size} (at most "
                f"{MAX_MEMBER} and {MAX_RATIO} times its packed size for an image): not an image archive"
            )
    return members


def _stack(images: list[np.ndarray], names: list[str], path: Path) -> np.ndarray:
    """One array of images that all have one size, or one error line naming two that differ."""
    sizes = {img.shape: name for img, name in zip(images, names, strict=True)}
    if len(sizes) > 1:
        (a, first), (b, second) = list(sizes.items())[:2]
        raise DataError(
            f"images of different sizes in {path}: {first} is {a[1]}x{a[0]}, {second} is {b[1]}x{b[0]}; "
            "resize them to one size (or set the dataset's image_size where it has one)"
        )
    return np.stack(images)


def class_tree_split(tree: ImageTree, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images and labels of `<top>/<split>/<class>/<file>` (classes numbered in sorted order)."""
    entries = []
    for name in tree.files:
        parts = Path(name).parts
        if len(parts) >= 3 and parts[-3] == split:
            entries.append((parts[-2], name))
    if not entries:
        raise DataError(
            f"no images under <top>/{split}/<class>/ in {tree.path}; expected <top>/{{train,test}}/<class>/<file>"
        )
    classes = sorted({c for c, _ in entries})
    index = {c: i for i, c in enumerate(classes)}
    x = _stack([tree.read(name) for _, name in entries], [name for _, name in entries], tree.path)
    y = np.array([index[c] for c, _ in entries], dtype=np.int64)
    return x, y, classes
