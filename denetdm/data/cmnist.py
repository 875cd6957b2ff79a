"""Colored MNIST (LfF protocol) over MNIST or any MNIST-format grayscale base read by torchvision."""

from pathlib import Path

import torch

from denetdm.checks import flag, path_text
from denetdm.data.colored import ColoredDataset
from denetdm.errors import ConfigError, DataError

BASES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}  # torchvision dataset classes
# the idx files torchvision reads from <root>/<class>/raw (the same names for both)
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def load_grayscale(base: str, root: str, download: bool) -> tuple[torch.Tensor, ...]:
    """(train images, train labels, test images, test labels) of an MNIST-format dataset under `root`."""
    if base not in BASES:
        raise ConfigError(f"dataset.base must be one of {sorted(BASES)}, got {base!r}")
    import torchvision  # imported here: it costs seconds, and a cached dataset never needs it

    cls = getattr(torchvision.datasets, BASES[base])
    folder = Path(root).expanduser() / cls.__name__ / "raw"
    try:
        train = cls(str(Path(root).expanduser()), train=True, download=download)
        test = cls(str(Path(root).expanduser()), train=False, download=download)
    except Exception as e:
        how = "and the download failed" if download else "and dataset.download=false"
        raise DataError(
            f"{base} not found in {folder} {how} ({type(e).__name__}: {str(e).strip().splitlines()[0][:120]}); "
            f"put the four {cls.__name__} idx files there, or point DENETDM_DATA at a folder holding "
            f"{cls.__name__}/raw, or allow the download"
        ) from None
    return train.data, train.targets, test.data, test.targets


class ColoredMNIST(ColoredDataset):
    """Colored MNIST: digit = target, colour = bias (docs/protocols.md §3)."""

    def __init__(self, root: str, base: str = "mnist", download: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        if base not in BASES:
            raise ConfigError(f"dataset.base must be one of {sorted(BASES)}, got {base!r}")
        self.root, self.base, self.download = path_text("data_root", root), base, flag("dataset.download", download)

    def source_params(self) -> dict:
        return {"base": self.base}

    def source(self) -> tuple[torch.Tensor, ...]:
        return load_grayscale(self.base, self.root, self.download)

    def source_files(self) -> dict[str, Path]:
        """The four idx files (downloaded first where they are missing and the download is allowed)."""
        folder = Path(self.root).expanduser() / BASES[self.base] / "raw"
        if not all((folder / name).is_file() for name in RAW_FILES):
            self.source()  # downloads them, or says in one line where to put them
        return {name: folder / name for name in RAW_FILES}
