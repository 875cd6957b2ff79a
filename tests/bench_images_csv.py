"""Load time and peak memory of `dataset=celeba` (the images_csv loader) on a generated tree in CelebA's layout:
`python tests/bench_images_csv.py --images 200000 --size 64`. The first load decodes and writes the cache, the
second reads the cache; each runs in its own process, which reports its peak resident memory beside the bytes
of the decoded images (one copy of them is the floor). Measures and prints; never fails on a timing.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def load_once(root: str, size: int) -> None:
    """In a child process: load the dataset, print what it took as JSON."""
    import resource

    from hydra.utils import instantiate

    sys.path.insert(0, str(HERE))
    from conftest import compose_cfg

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.time()
    data = instantiate(
        compose_cfg(["dataset=celeba", f"dataset.root={root}", f"dataset.image_size={size}"]).dataset
    ).load()
    seconds = time.time() - t0
    images = sum(s.x.numel() * s.x.element_size() for s in (data.train, data.val, data.test))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {"s": seconds, "images_mib": images / 2**20, "rss_before_mib": before / 1024, "peak_mib": peak / 1024}
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=64, help="dataset.image_size")
    ap.add_argument("--tree", help="an existing tree to reuse (default: generated in a temporary folder)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return load_once(args.child, args.size)
    sys.path.insert(0, str(HERE))
    from test_images_csv import celeba_tree

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.tree) if args.tree else Path(tmp) / "celeba"
        if not (root / "list_attr_celeba.txt").exists():
            t0 = time.time()
            celeba_tree(root, args.images, np.random.default_rng(0))
            print(f"generated {args.images} images in CelebA's layout in {time.time() - t0:.0f} s")
        env = {**os.environ, "DENETDM_CACHE": str(Path(tmp) / "cache")}
        for what in ("first load (decode, cache)", "cached load"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(root), "--size", str(args.size)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{what}: {r['s']:.1f} s; decoded images {r['images_mib']:.0f} MiB; peak resident memory "
                f"{r['peak_mib']:.0f} MiB ({r['rss_before_mib']:.0f} MiB before loading)"
            )


if __name__ == "__main__":
    main()
