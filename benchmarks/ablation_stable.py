"""Ablation of the `stable` DCGAN preset: remove one ingredient at a time, same data and image budget.

Each variant trains on the same phantom images, then is scored with the offline metrics against fresh
phantom images it never saw (held-out indices). Prints a Markdown table for benchmarks/README.md.

    python benchmarks/ablation_stable.py --n 1000 --epochs 10 --batch-size 64 --out results/ablation-stable
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cxr_utils import evaluate, phantom, runs, train
from cxr_utils.data import from_uint8

VARIANTS: dict[str, dict] = {  # the ingredients the short-budget ablation questioned come first
    "stable": {},
    "- EMA": {"ema_kimg": 0.0},
    "- EMA ramp-up (fixed 2 kimg half-life)": {"ema_rampup": None},
    "- hinge (BCE)": {"loss": "bce"},
    "- TTUR (2e-4 / 2e-4)": {"lr_g": 2e-4, "lr_d": 2e-4},
    "- DiffAugment": {"augment": "none"},
    "- spectral norm (+BN in D)": {"spectral_norm": False, "d_batchnorm": True},
    "reference (lungcancer-dcgan)": None,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--n-eval", type=int, default=500)
    ap.add_argument("--out", type=Path, default=Path("results/ablation-stable"))
    ap.add_argument("--only", nargs="*", default=None, help="variant names to run (default: all)")
    args = ap.parse_args()

    held_out = phantom.render(range(10_000, 10_000 + 2 * args.n_eval), size=64, seed=0).images
    ref = from_uint8(torch.from_numpy(held_out)).unsqueeze(1)
    rows = []
    for name, overrides in VARIANTS.items():
        if args.only is not None and name not in args.only:
            continue
        preset = "lungcancer-dcgan" if overrides is None else "stable"
        cfg = train.make_config(preset, source=f"phantom:{args.n}", epochs=args.epochs,
                                batch_size=args.batch_size, grid_epochs=(args.epochs,), **(overrides or {}))
        run_dir = args.out / name.replace(" ", "_").replace("/", "-").replace("(", "").replace(")", "")
        t0 = time.perf_counter()
        # An interrupted ablation resumes its runs (bit-identical to uninterrupted ones).
        resume = (run_dir / runs.STATE).exists()
        result = train.train(cfg, run_dir, resume=resume, overwrite=not resume, progress=False)
        seconds = result.seconds if resume else time.perf_counter() - t0
        fake = runs.sample(result.G, args.n_eval, seed=1).mean(1, keepdim=True)
        m = evaluate.evaluate(ref[: args.n_eval], ref[args.n_eval:], fake, progress=False)
        (run_dir / "ablation_metrics.json").write_text(json.dumps(m, indent=1, default=str))
        rows.append((name, seconds, m["fid"]["offline"]["value"], m["kid"]["offline"]["value"],
                     m["precision_recall"]["offline"]["precision"], m["precision_recall"]["offline"]["recall"],
                     m["diversity"]["generated"], m["diversity"]["real"]))
        print(rows[-1], flush=True)
    print("\n| variant | train s | offline FID | KID | precision | recall | MS-SSIM fake (real) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.0f} | {r[2]:.3f} | {r[3]:.4f} | {r[4]:.2f} | {r[5]:.2f} | {r[6]:.3f} ({r[7]:.3f}) |")


if __name__ == "__main__":
    main()
