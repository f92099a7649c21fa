"""Evaluation cost: seconds per stage of every metric for 2,000 real vs 2,000 generated images.

Usage: python benchmarks/bench_metrics.py [--n 2000] [--holdout 500] [--size 64]
       [--inception-images N] [--end-to-end] [--out bench.json]

Runs the stages of ``evaluate`` one by one on phantom images (seed 0 as the real set, seed 1
standing in for generated images): the offline stages once on one thread (as ``evaluate`` runs
them) and once with torch's and BLAS's default thread counts; Inception features (default threads,
as ``evaluate`` runs them) with their throughput in images/s, on ``--inception-images`` images
(default: all of them; fewer gives a measured throughput and an extrapolated stage time); C2ST
real vs generated and its real-vs-held-out floor with ``evaluate``'s defaults. ``--end-to-end``
also times the whole ``evaluate`` call with its figures (Inception included, cold feature cache).
Image rendering is not timed. On a shared machine figures vary from run to run: the load average
is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from cxr_utils import metrics as M
from cxr_utils import phantom
from cxr_utils.evaluate import evaluate


def _images(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(phantom.generate(n, size, seed).images).float().div(127.5).sub(1)[:, None]


def _stages(train: torch.Tensor, holdout: torch.Tensor, fake: torch.Tensor,
            threads: Callable[[], contextlib.AbstractContextManager]) -> dict[str, float]:
    times: dict[str, float] = {}

    def timed(name, fn, *args, **kwargs):
        with threads():
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            times[name] = time.perf_counter() - t
        return out

    ext = M.get_extractor("offline")
    f_train, f_hold, f_fake = timed("features (offline, all sets)", lambda: [ext(x) for x in (train, holdout, fake)])
    timed("FID + baseline", lambda: (M.fid(f_train, f_fake), M.fid(f_train, f_hold)))
    timed("KID + baseline (100 subsets)", lambda: (M.kid(f_train, f_fake), M.kid(f_train, f_hold)))
    timed("precision/recall k=3", M.precision_recall, f_train, f_fake)
    timed("density/coverage k=5", M.density_coverage, f_train, f_fake)
    timed("SWD + baseline", lambda: (M.swd(train, fake), M.swd(train, holdout)))
    timed("MS-SSIM diversity (2 x 1000 pairs)", lambda: (M.msssim_diversity(fake), M.msssim_diversity(train)))
    scale = 1 / math.sqrt(train[0].numel())
    timed("memorisation audit (pixels)", M.memorisation_audit,
          *(x.flatten(1).double().numpy() * scale for x in (train, holdout, fake)))
    timed("memorisation audit (offline features)", M.memorisation_audit, f_train, f_hold, f_fake)
    return times


def _inception_and_c2st(train: torch.Tensor, holdout: torch.Tensor, fake: torch.Tensor,
                        n_inception: int | None) -> dict[str, float]:
    from cxr_utils import c2st as C

    ext = M.get_extractor("inception")
    ext(train[:2])  # load and warm up outside the timing
    every = torch.cat([train, holdout, fake])
    sample = every if n_inception is None else every[:n_inception]
    t = time.perf_counter()
    ext(sample)
    seconds = time.perf_counter() - t
    rate = len(sample) / seconds
    out = {"inception_images_timed": len(sample), "inception_images_per_s": rate,
           "inception_features_s (all sets)": len(every) / rate,
           "inception_extrapolated": len(sample) < len(every)}
    with M.single_threaded():
        t = time.perf_counter()
        fake_r = C.c2st(train, fake, steps=150)
        floor_r = C.c2st(train, holdout, steps=150)
        out["c2st_s (vs generated + floor)"] = time.perf_counter() - t
    out["c2st_seeds"] = [fake_r["n_seeds"], floor_r["n_seeds"]]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="real training and generated images each")
    parser.add_argument("--holdout", type=int, default=500, help="held-out real images")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--inception-images", type=int, default=None,
                        help="time Inception on this many images and extrapolate (default: all)")
    parser.add_argument("--end-to-end", action="store_true", help="also time evaluate() with every metric")
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    args = parser.parse_args()

    real = _images(args.n + args.holdout, args.size, seed=0)
    train, holdout, fake = real[:args.n], real[args.n:], _images(args.n, args.size, seed=1)
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {platform.processor() or 'cpu'}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}; "
          f"{args.n} real + {args.holdout} held-out vs {args.n} generated, {args.size}x{args.size}")
    single = _stages(train, holdout, fake, M.single_threaded)
    default = _stages(train, holdout, fake, contextlib.nullcontext)
    print(f"  {'stage':<40} {'1 thread':>10} {f'{threads} threads':>10}")
    for name in single:
        print(f"  {name:<40} {single[name]:9.2f}s {default[name]:9.2f}s")
    print(f"  {'sum of offline stages':<40} {sum(single.values()):9.2f}s {sum(default.values()):9.2f}s")
    deep = _inception_and_c2st(train, holdout, fake, args.inception_images)
    how = "extrapolated" if deep["inception_extrapolated"] else "measured"
    print(f"  Inception: {deep['inception_images_per_s']:.2f} images/s on {deep['inception_images_timed']} images "
          f"({threads} threads); all {2 * args.n + args.holdout} images: "
          f"{deep['inception_features_s (all sets)']:.0f}s ({how})")
    print(f"  C2ST vs generated + real floor: {deep['c2st_s (vs generated + floor)']:.1f}s "
          f"(seeds {deep['c2st_seeds']})")
    estimate = sum(single.values()) + deep["inception_features_s (all sets)"] + deep["c2st_s (vs generated + floor)"]
    print(f"  {'every metric (sum of stages)':<40} {estimate:9.1f}s")
    total = None
    if args.end_to_end:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            evaluate(train, holdout, fake, out_dir=tmp, progress=False, feature_cache=None)
            total = time.perf_counter() - t
        print(f"  {'evaluate() end to end, with figures':<40} {total:9.2f}s")
    print(f"  load average at the end: {os.getloadavg()[0]:.2f}")
    if args.out:
        args.out.write_text(json.dumps({"n": args.n, "holdout": args.holdout, "size": args.size,
                                        "stages_s_1_thread": single, f"stages_s_{threads}_threads": default,
                                        **deep, "every_metric_s": estimate, "evaluate_s": total},
                                       indent=2) + "\n")


if __name__ == "__main__":
    main()
