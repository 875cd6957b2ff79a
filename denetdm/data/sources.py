"""Image sources: class-folder trees in a folder or a zip (`<top>/{train,test}/<class>/<file>`)."""

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from denetdm.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class ImageTree:
    """Read-only access to image files in a folder or a zip, by path relative to the root."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise DataError(f"image source {self.path} does not exist; give a folder or a .zip")
        self.zip = zipfile.ZipFile(self.path) if self.path.is_file() else None
        if self.zip is not None:
            self.files = sorted(n for n in self.zip.namelist() if n.lower().endswith(IMAGE_SUFFIXES))
        else:
            self.files = sorted(
                str(p.relative_to(self.path)) for p in self.path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
            )

    def fingerprint(self) -> dict:
        """What identifies this source's contents cheaply (part of cache keys)."""
        st = self.path.stat()
        return {
            "path": str(self.path.resolve()),
            "size": st.st_size,
            "mtime": int(st.st_mtime),
            "files": len(self.files),
        }

    def read(self, name: str, size: int | None = None) -> np.ndarray:
        """One image as uint8 (H, W, 3), resized to size x size when given."""
        try:
            data = self.zip.read(name) if self.zip is not None else (self.path / name).read_bytes()
            img = Image.open(io.BytesIO(data)).convert("RGB")
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            return np.asarray(img)
        except Exception as e:
            raise DataError(f"cannot read image {name} in {self.path} ({type(e).__name__}: {e})") from None


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
    x = np.stack([tree.read(name) for _, name in entries])
    y = np.array([index[c] for c, _ in entries], dtype=np.int64)
    return x, y, classes
