"""Ablation of the `stable` DCGAN preset: remove one ingredient at a time, and add one to the reference.

Each variant trains on the same phantom images, then is scored with the offline metrics against fresh
phantom images it never saw (held-out indices). Prints a Markdown table for benchmarks/README.md.

    python benchmarks/ablation_stable.py --n 2000 --epochs 25 --batch-size 128 --out results/ablation-stable-48k
    python benchmarks/ablation_stable.py ... --only "stable" "- EMA"      # a subset (names as in VARIANTS)

An interrupted ablation resumes: runs with a checkpoint continue (bit-identically) instead of restarting.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cxr_utils import evaluate, phantom, runs, train
from cxr_utils.images import from_uint8

# name -> (preset, overrides). Remove-one from `stable`; the ingredients the short-budget ablation
# questioned come first. Then add-one to the reference: which single ingredient rescues it.
VARIANTS: dict[str, tuple[str, dict]] = {
    "stable": ("stable", {}),
    "- EMA": ("stable", {"ema_kimg": 0.0}),
    "- EMA ramp-up (fixed 2 kimg half-life)": ("stable", {"ema_rampup": None}),
    "- hinge (BCE)": ("stable", {"loss": "bce"}),
    "- TTUR (2e-4 / 2e-4)": ("stable", {"lr_g": 2e-4, "lr_d": 2e-4}),
    "- DiffAugment": ("stable", {"augment": "none"}),
    "- spectral norm (+BN in D)": ("stable", {"spectral_norm": False, "d_batchnorm": True}),
    "reference (lungcancer-dcgan)": ("lungcancer-dcgan", {}),
    "reference + spectral norm (no BN in D)": ("lungcancer-dcgan", {"spectral_norm": True, "d_batchnorm": False}),
    "reference + hinge": ("lungcancer-dcgan", {"loss": "hinge"}),
    "reference + EMA (2 kimg, ramp-up)": ("lungcancer-dcgan", {"ema_kimg": 2.0, "ema_rampup": 0.05}),
    "reference + DiffAugment p=0.3": ("lungcancer-dcgan", {"augment": "diffaug", "augment_p": 0.3}),
    "reference + TTUR (1e-4 / 4e-4)": ("lungcancer-dcgan", {"lr_g": 1e-4, "lr_d": 4e-4}),
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
    for name, (preset, overrides) in VARIANTS.items():
        if args.only is not None and name not in args.only:
            continue
        cfg = train.make_config(preset, source=f"phantom:{args.n}", epochs=args.epochs,
                                batch_size=args.batch_size, grid_epochs=(args.epochs,), **overrides)
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
