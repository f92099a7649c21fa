"""How small a change to real radiographs the C2ST detects: its sensitivity, measured on real images.

The comparison's C2ST (``cxr_utils.c2st``, the settings ``compare`` uses: 150 steps a seed, seeds
until the 95% interval is +-0.03 wide, at most 20) tests the held-out part of a source (label 0)
against a seeded subset of its training part (label 1) that has been changed in one known way: a
Gaussian blur, unsharp masking, 2x down- and up-sampling, JPEG, a brightness or contrast shift. Every
changed image is quantised back to 8 bits, as a saved sample would be. The unchanged subset is the
floor. A generator can pass the test only if it is closer to the data than the smallest change the
test detects. Prints a Markdown table for benchmarks/README.md.

    OMP_NUM_THREADS=1 python benchmarks/bench_c2st_sensitivity.py --source phantom:2000 --n 300
    OMP_NUM_THREADS=1 python benchmarks/bench_c2st_sensitivity.py --source ROOT/nih_sample --n 100
"""

from __future__ import annotations

import argparse
import io
import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.functional import gaussian_blur

from cxr_utils import compare
from cxr_utils.c2st import c2st
from cxr_utils.data import load
from cxr_utils.images import to_uint8
from cxr_utils.stats import seeded_subset

Change = Callable[[torch.Tensor], torch.Tensor]


def quantise(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> the nearest of the 256 grey levels an 8-bit file holds, back in [-1, 1]."""
    return to_uint8(x).float() / 127.5 - 1


def blur(sigma: float) -> Change:
    k = 2 * math.ceil(3 * sigma) + 1
    return lambda x: gaussian_blur(x, [k, k], [sigma, sigma])


def unsharp(amount: float, sigma: float = 1.0) -> Change:
    return lambda x: x + amount * (x - blur(sigma)(x))


def down_up(mode: str) -> Change:
    extra = {} if mode == "nearest" else {"align_corners": False}
    return lambda x: F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode=mode, **extra)


def jpeg(quality: int) -> Change:
    def change(x: torch.Tensor) -> torch.Tensor:
        out = []
        for image in to_uint8(x[:, 0]).numpy():
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, "JPEG", quality=quality)
            out.append(np.asarray(Image.open(buf), dtype=np.float32))
        return torch.from_numpy(np.stack(out))[:, None] / 127.5 - 1
    return change


CHANGES: dict[str, Change] = {
    "none (floor)": lambda x: x,
    "Gaussian blur, sigma 0.3 px": blur(0.3),
    "Gaussian blur, sigma 0.5 px": blur(0.5),
    "Gaussian blur, sigma 0.7 px": blur(0.7),
    "Gaussian blur, sigma 1.0 px": blur(1.0),
    "unsharp mask, amount 0.3 (sigma 1 px)": unsharp(0.3),
    "2x average-pool, bilinear up": down_up("bilinear"),
    "2x average-pool, nearest up": down_up("nearest"),
    "JPEG quality 90": jpeg(90),
    "JPEG quality 75": jpeg(75),
    "brightness +2% of the range": lambda x: x + 0.04,
    "contrast x1.05": lambda x: x * 1.05,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="phantom:2000")
    parser.add_argument("--n", type=int, default=300, help="training images changed and tested (a seeded subset)")
    parser.add_argument("--holdout-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    ds = load(args.source, image_size=64, channels=3, progress=False)
    train, hold = compare.split_images(ds.images.float(), args.holdout_fraction, args.seed, ds.groups)
    hold = compare.to_gray(hold)
    ref = compare.to_gray(train[torch.from_numpy(seeded_subset(len(train), args.n, args.seed, sort=False))])
    print(f"{args.source}: {len(ref)} changed training images vs {len(hold)} held-out, C2ST steps "
          f"{compare.C2ST_STEPS}\n")
    print("| change to real images | C2ST AUC [95% CI] | accuracy | seeds |\n|---|---|---|---|")
    for name, change in CHANGES.items():
        r = c2st(hold, quantise(change(ref.float())), seed=args.seed, max_per_set=len(hold), steps=compare.C2ST_STEPS)
        lo, hi = r["auc_ci95"]
        print(f"| {name} | {r['auc']:.3f} [{lo:.3f}, {hi:.3f}] | {r['accuracy']:.3f} | {r['n_seeds']} |", flush=True)


if __name__ == "__main__":
    main()
