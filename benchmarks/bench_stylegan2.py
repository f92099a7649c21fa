"""StyleGAN2-ADA training speed: images/s and kimg/hour of full iterations (D step + G step).

Usage: python benchmarks/bench_stylegan2.py [--preset cpu-small] [--size 64] [--iters 16] [--out bench.json]

For each modulated-convolution form ("activation", "grouped") and precision (fp32, bf16 autocast) it
builds what the training loop builds for ``train_config.stylegan2_preset(PRESET, SIZE)`` (networks, ADA pipeline, the
one ``StyleGAN2Steps``), runs ``--warmup`` iterations, then times ``--iters`` iterations of ``d_step`` +
``g_step`` + the loop's ``ema_update`` on random reals with the augmentation at p = 0.3. With the default
16 iterations the lazy R1 step (every 16 minibatches) and, when enabled, the path-length step (every 4)
are included exactly once per interval, so the figure is the amortised cost. Data loading is excluded.
Settings are timed in alternation (``--repeats`` rounds) and the best round is reported, which damps the
noise of a shared machine; figures still vary run to run. The process CPU time per iteration is printed
too: on a busy machine it tracks the work done better than wall time (with ``--threads 1`` it is the
single-core cost; with more threads it also counts threads spinning while they wait).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch

from cxr_utils import ada
from cxr_utils.models import build_discriminator, build_generator
from cxr_utils.models import stylegan2 as sg
from cxr_utils.models.stylegan2_loss import StyleGAN2Steps
from cxr_utils.train import ema_beta, ema_update
from cxr_utils.train_config import make_config, stylegan2_preset


def time_iterations(steps: StyleGAN2Steps, G_ema: torch.nn.Module, real: torch.Tensor,
                    iters: int) -> tuple[float, float]:
    """Wall and process CPU seconds for ``iters`` full iterations (the lazy schedule follows ``steps.nimg``)."""
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(iters):
        steps.d_step(real)
        steps.g_step()
        ema_update(G_ema, steps.G, ema_beta(steps.cfg, steps.nimg))
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu-small", choices=list(sg.STYLEGAN2_PRESETS))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch-size", type=int, help="default: the preset's")
    parser.add_argument("--impls", nargs="+", default=["activation", "grouped"], choices=["activation", "grouped"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--iters", type=int, default=16, help="timed iterations per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds; the best is kept")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    batch = args.batch_size or sg.STYLEGAN2_PRESETS[args.preset]["batch_size"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or 'cpu'}, "
          f"preset {args.preset}, {args.size} px x {args.channels} ch, batch {batch}, "
          f"{args.iters} iterations x {args.repeats} rounds")
    settings = [(impl, prec) for impl in args.impls for prec in args.precisions]
    runs = {}
    for impl, precision in settings:
        cfg = make_config(None, **{**stylegan2_preset(args.preset, args.size, kimg=1), "channels": args.channels,
                                   "batch_size": batch, "modconv_impl": impl, "augment_p": 0.3})
        torch.manual_seed(0)
        G, D = build_generator(cfg), build_discriminator(cfg)
        amp_dtype = torch.bfloat16 if precision == "bf16" else None
        steps = StyleGAN2Steps(G, D, cfg, torch.device("cpu"), amp_dtype, ada.from_train_config(cfg))
        G_ema = copy.deepcopy(G).eval().requires_grad_(False)
        real = torch.rand(batch, args.channels, args.size, args.size) * 2 - 1
        time_iterations(steps, G_ema, real, args.warmup)
        runs[impl, precision] = (steps, G_ema, real)
    best = {s: (float("inf"), float("inf")) for s in settings}
    for _ in range(args.repeats):
        for s in settings:
            steps, G_ema, real = runs[s]
            steps.nimg = 0  # each timed round starts at iteration 0: the lazy steps fall as in training
            best[s] = min(best[s], time_iterations(steps, G_ema, real, args.iters))

    print(f"{'modconv':<11} {'precision':>9} {'s/iter':>8} {'img/s':>8} {'kimg/h':>8} {'cpu s/iter':>10}")
    rows = []
    for (impl, precision), (seconds, cpu_seconds) in best.items():
        ips = batch * args.iters / seconds
        rows.append({"modconv_impl": impl, "precision": precision, "seconds_per_iter": seconds / args.iters,
                     "images_per_s": ips, "kimg_per_h": ips * 3.6, "cpu_seconds_per_iter": cpu_seconds / args.iters})
        print(f"{impl:<11} {precision:>9} {seconds / args.iters:>8.3f} {ips:>8.1f} {ips * 3.6:>8.1f} "
              f"{cpu_seconds / args.iters:>10.3f}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
