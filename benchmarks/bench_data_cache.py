"""First versus cached ``data.load`` of a folder of PNGs (the cache should make it >= 20x faster).

Writes ``--n`` grayscale PNGs of ``--size`` px into a temporary folder (two class sub-folders), loads it
once (decode, crop, resize, MD5, cache write), then ``--repeat`` more times (cache hits), and prints the
wall and CPU times and their ratios, first versus median cached load. On a shared machine the CPU
time (all threads of this process) is the steadier figure; the median damps the wall-clock noise.
The images are phantom radiographs rendered at 64 px, upsampled and given light noise, so they are
distinct and decode like real 8-bit images without the cost of rendering them at full size.

    .venv/bin/python benchmarks/bench_data_cache.py [--n 2000] [--size 256] [--image-size 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cxr_utils import data, phantom


def write_folder(root: Path, n: int, size: int, seed: int = 0) -> None:
    ps = phantom.generate(n, size=64, seed=seed)
    rng = np.random.default_rng(seed)
    for i, (img, label) in enumerate(zip(ps.images, ps.labels)):
        big = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)
        big = np.clip(big + rng.normal(0, 2, big.shape), 0, 255).astype(np.uint8)
        folder = root / ps.class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(big).save(folder / f"phantom_{i:05d}.png")


def timed_load(folder: Path, cache_dir: Path, image_size: int) -> tuple[float, float, data.CXRDataset]:
    """(wall seconds, CPU seconds, dataset) of one load."""
    wall, cpu = time.perf_counter(), time.process_time()
    ds = data.load(str(folder), image_size=image_size, cache_dir=cache_dir, progress=False)
    return time.perf_counter() - wall, time.process_time() - cpu, ds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="number of PNGs (default: 2000)")
    parser.add_argument("--size", type=int, default=256, help="side of the PNGs in px (default: 256)")
    parser.add_argument("--image-size", type=int, default=64, help="load resolution (default: 64)")
    parser.add_argument("--repeat", type=int, default=3, help="cached loads to time (default: 3)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder, cache_dir = Path(tmp) / "pngs", Path(tmp) / "cache"
        write_folder(folder, args.n, args.size)
        first_wall, first_cpu, ds = timed_load(folder, cache_dir, args.image_size)
        cached = [timed_load(folder, cache_dir, args.image_size) for _ in range(max(1, args.repeat))]
    assert not ds.report.from_cache and len(ds) == args.n
    assert all(c.report.from_cache and torch.equal(c.images, ds.images) for *_, c in cached)
    wall = float(np.median([w for w, _, _ in cached]))
    cpu = float(np.median([c for _, c, _ in cached]))
    print(f"{args.n} PNGs of {args.size}x{args.size} -> {args.image_size}x{args.image_size}")
    print(f"first load  (decode + cache write): wall {first_wall:7.3f} s   cpu {first_cpu:7.3f} s")
    print(f"cached load (scan + cache read):    wall {wall:7.3f} s   cpu {cpu:7.3f} s   (median of {len(cached)}; "
          f"wall {', '.join(f'{w:.3f}' for w, _, _ in cached)})")
    print(f"speed-up: wall {first_wall / wall:.1f}x, cpu {first_cpu / cpu:.1f}x")


if __name__ == "__main__":
    main()
