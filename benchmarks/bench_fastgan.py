"""FastGAN's three discriminators (scratch, projected, hybrid) against `stable` at equal wall time.

Every arm trains through the shared loop on the same training part of one data source (64 px, gray)
for about the same training time, then its EMA generator is scored against the held-out part it never
saw: C2ST AUC (``cxr_utils.c2st``, 0.5 = indistinguishable) and FID with the offline extractor (and
Inception when asked and installed), through ``evaluate.evaluate``. The loop trains whole epochs, so
each arm's epoch count is set from its own measured speed (a few timed iterations before training):
``epochs = round(seconds * images_per_s / epoch_size)``. Prints a Markdown table for
benchmarks/README.md and writes each arm's sample grid next to its run.

    OMP_NUM_THREADS=1 python benchmarks/bench_fastgan.py --seconds 240 --out results/bench-fastgan
    python benchmarks/bench_fastgan.py --source ROOT/nih_sample --out results/bench-fastgan-nih ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from cxr_utils import compare, evaluate, runs, train
from cxr_utils import images as I
from cxr_utils.data import load

# name -> (preset, overrides): every FastGAN arm starts from fastgan-cpu.
ARMS: dict[str, tuple[str, dict]] = {
    "stable": ("stable", {"channels": 1}),
    "fastgan scratch": ("fastgan-cpu", {"d_arch": "scratch", "recon_weight": 1.0}),
    "fastgan projected (feature 64)": ("fastgan-cpu", {"d_arch": "projected", "feature_size": 64, "recon_weight": 0.0}),
    "fastgan hybrid (feature 64)": ("fastgan-cpu", {"d_arch": "hybrid", "feature_size": 64, "recon_weight": 1.0}),
}


def measured_rate(cfg: train.TrainConfig, images: torch.Tensor, iters: int = 4) -> float:
    """Images per second of D step + G step + EMA on this machine now (first iteration not timed)."""
    device = torch.device("cpu")
    parts = train._build(cfg, device, None, torch.contiguous_format)
    steps, batch = parts.steps, images[: cfg.batch_size]
    times = []
    for i in range(iters + 1):
        t = time.perf_counter()
        steps.d_step(batch)
        steps.g_step()
        if parts.G_ema is not None:
            train.ema_update(parts.G_ema, steps.G, 0.99)
        times.append(time.perf_counter() - t)
    return cfg.batch_size / (sum(times[1:]) / iters)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="phantom:2000")
    ap.add_argument("--seconds", type=float, default=240.0, help="training time per arm")
    ap.add_argument("--holdout-fraction", type=float, default=0.2)
    ap.add_argument("--extractors", default="offline")
    ap.add_argument("--only", nargs="*", default=None, help="arm names (default: all)")
    ap.add_argument("--override", default="{}", help="JSON dict applied to every FastGAN arm")
    ap.add_argument("--out", type=Path, default=Path("results/bench-fastgan"))
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    data = load(args.source, image_size=64, channels=1, progress=False)
    groups = getattr(data, "groups", None)
    real_train, real_holdout = compare.split_images(data.images.float(), args.holdout_fraction, seed=0, groups=groups)
    extra = json.loads(args.override)
    rows = []
    for name in args.only or ARMS:
        preset, overrides = ARMS[name]
        over = {**overrides, **(extra if preset.startswith("fastgan") else {})}
        cfg = train.make_config(preset, image_size=64, precision="fp32", seed=0, **over)
        cfg = dataclasses.replace(cfg, batch_size=min(cfg.batch_size, len(real_train) // 2))
        rate = measured_rate(cfg, real_train)
        per_epoch = (len(real_train) // cfg.batch_size) * cfg.batch_size
        epochs = max(1, round(args.seconds * rate / per_epoch))
        cfg = dataclasses.replace(cfg, kimg=None, epochs=epochs, grid_epochs=(epochs,), checkpoint_every=epochs,
                                  sample_every=epochs, n_fixed=64)
        run_dir = args.out / compare.slug(name)
        result = train.train(cfg, run_dir, images=real_train, overwrite=True, progress=False)
        G = runs.load_run(run_dir)[1]
        fake = runs.sample(G, len(real_holdout), seed=1)
        I.save_png(I.grid(fake[:64], nrow=8, padding=2, pad_value=0, gray=True), run_dir / "grid_eval.png")
        m = evaluate.evaluate(real_train, real_holdout, fake, extractors=args.extractors, seed=0, progress=False,
                              c2st=True, c2st_max_seeds=5)
        row = {"arm": name, "epochs": epochs, "kimg": result.kimg, "train_s": result.seconds,
               "img_per_s": result.kimg * 1000 / result.seconds, "c2st_auc": m["c2st"].get("auc"),
               "c2st_floor": m["c2st"].get("real_baseline")}
        for e in args.extractors.split(","):
            row[f"fid_{e}"] = m["fid"][e].get("value")
            row[f"fid_{e}_floor"] = m["fid"][e].get("real_baseline")
        rows.append(row)
        print(json.dumps(row), flush=True)
        (args.out / "rows.jsonl").open("a").write(json.dumps(row) + "\n")
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")


if __name__ == "__main__":
    main()
