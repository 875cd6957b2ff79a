"""Contact sheet of a dataset's protocol: rows = classes, columns = bias values, one image per cell.

    python -m denetdm.data.preview dataset=ccifar10 dataset.source=../shared/data/cifar10-jpeg.zip --out sheet.png

Arguments are the same Hydra overrides as run.py's. Cells come from the training split, or from the test
split where the training split has no sample of that (class, bias) pair.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from denetdm.checks import instantiate_checked
from denetdm.cli import CONF, check_group_choices, quote_numeric_choices
from denetdm.errors import DenetdmError


def contact_sheet(
    data, biases: list[str] | None = None, classes: list[str] | None = None, cell: int = 64
) -> Image.Image:
    """The sheet as a PIL image: rows named by `classes`, columns by `biases` (their indices where None)."""
    c, k = data.num_classes, data.num_biases
    classes = classes or [str(i) for i in range(c)]
    pad, left, top = 2, 8 + 6 * max(map(len, classes)), 16 if biases is None else 40
    sheet = Image.new("RGB", (left + k * (cell + pad), top + c * (cell + pad)), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default()
    for j in range(k):
        label = biases[j] if biases else str(j)
        x = left + j * (cell + pad)
        if biases:  # long names: write them rotated above the column
            txt = Image.new("L", (top, 12), 255)
            ImageDraw.Draw(txt).text((0, 0), label[:8], fill=0, font=font)
            sheet.paste(txt.rotate(90, expand=True).convert("RGB"), (x + cell // 2 - 6, 0))
        else:
            draw.text((x + cell // 2 - 3, 2), label, fill="black", font=font)
    for i in range(c):
        draw.text((4, top + i * (cell + pad) + cell // 2 - 5), classes[i], fill="black", font=font)
        for j in range(k):
            for split in (data.train, data.test):
                idx = ((split.y == i) & (split.b == j)).nonzero().flatten()
                if len(idx):
                    img = split.x[idx[0]].permute(1, 2, 0).numpy().astype(np.uint8)
                    tile = Image.fromarray(img).resize((cell, cell), Image.NEAREST)
                    sheet.paste(tile, (left + j * (cell + pad), top + i * (cell + pad)))
                    break
    return sheet


def main(argv: list[str] | None = None) -> None:
    """Compose the config from overrides, load the dataset (uint8, not normalised) and write the sheet."""
    from hydra import compose, initialize_config_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset=cmnist severity=2")
    ap.add_argument("--out", default=None, help="PNG path (default: preview_<dataset>.png)")
    args = ap.parse_args(argv)
    if problem := check_group_choices(args.overrides):
        sys.exit(problem)
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="config", overrides=quote_numeric_choices(args.overrides))
        torch.set_num_threads(int(cfg.threads or 2))
        dataset = instantiate_checked(cfg.dataset)
        data = dataset.load()
        classes, biases = dataset.label_names()
        sheet = contact_sheet(data, biases, classes)
    except DenetdmError as e:
        sys.exit(f"error: {e}")
    out = Path(args.out or f"preview_{data.name}.png")
    sheet.save(out)
    print(f"wrote {out} ({data.num_classes} classes x {data.num_biases} bias values)")


if __name__ == "__main__":
    main()
