"""Phantom generation speed in images per second at 64, 128 and 256 px (one process).

Usage: python benchmarks/bench_phantom.py [--n64 1000] [--n128 200] [--n256 50] [--montage docs/images]

``--montage DIR`` also writes the 4 x 8 labelled montages ``phantom_montage_{64,128}.png`` shown in
the docs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from PIL import Image, ImageDraw

from cxr_utils import phantom


def images_per_second(n: int, size: int) -> tuple[float, float]:
    """Wall-clock and CPU-time rates; they differ when other processes share the cores."""
    phantom.generate(2, size=size, seed=1)  # warm up imports and the cached vessel texture
    wall, cpu = time.perf_counter(), time.process_time()
    phantom.generate(n, size=size, seed=0)
    return n / (time.perf_counter() - wall), n / (time.process_time() - cpu)


def write_montage(path: Path, size: int, rows: int = 4, cols: int = 8, seed: int = 0) -> None:
    """Images 0 .. rows*cols-1 of ``seed``, each captioned with its class and nodule count."""
    s = phantom.generate(rows * cols, size=size, seed=seed)
    gap, caption = 2, 12
    sheet = Image.new("L", (cols * (size + gap) + gap, rows * (size + caption + gap) + gap), 0)
    draw = ImageDraw.Draw(sheet)
    for k, (img, label, nods) in enumerate(zip(s.images, s.labels, s.nodules)):
        x = gap + (k % cols) * (size + gap)
        y = gap + (k // cols) * (size + caption + gap)
        sheet.paste(Image.fromarray(img), (x, y))
        text = s.class_names[label] + (f" x{len(nods)}" if nods else "")
        draw.text((x + 1, y + size), text, fill=255)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n64", type=int, default=1000)
    parser.add_argument("--n128", type=int, default=200)
    parser.add_argument("--n256", type=int, default=50)
    parser.add_argument("--montage", type=Path, default=None, metavar="DIR")
    args = parser.parse_args()
    for size, n in ((64, args.n64), (128, args.n128), (256, args.n256)):
        rate, cpu_rate = images_per_second(n, size)
        print(f"{size:4d} px: {rate:8.1f} images/s  ({n} images in {n / rate:.2f} s; "
              f"{cpu_rate:.1f} images per CPU second)")
    if args.montage is not None:
        for size in (64, 128):
            write_montage(args.montage / f"phantom_montage_{size}.png", size)


if __name__ == "__main__":
    main()
