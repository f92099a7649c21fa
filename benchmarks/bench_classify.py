"""Classifier training speed: images per second for each backbone, input size and precision.

Usage: python benchmarks/bench_classify.py [--sizes 64 128] [--device cpu] [--out bench.json]

Times forward + backward + AdamW steps on random data at batch 32, so the numbers bound what a
study run can reach; data loading and augmentation are not included. On a shared machine figures
vary by 10-20 % from run to run.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cxr_utils import device as devices
from cxr_utils.classify import build_classifier

BACKBONES = ("resnet50", "resnet18", "smallcnn")


def training_throughput(backbone: str, image_size: int = 64, batch_size: int = 32, precision: str = "fp32",
                        device: str = "cpu", channels_last: bool = False, steps: int = 5, warmup: int = 2,
                        seed: int = 0) -> float:
    """Training images per second (forward, backward, optimiser step) on random data."""
    dev = devices.pick_device(device)
    amp = devices.resolve_precision(precision, dev)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = build_classifier(backbone, 2, image_size, seed=seed).to(dev, memory_format=memory_format).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(batch_size, 1, image_size, image_size, generator=gen) * 2 - 1).to(dev)
    x = x.contiguous(memory_format=memory_format)
    y = torch.randint(0, 2, (batch_size,), generator=gen).to(dev)

    def step() -> None:
        with devices.autocast(dev, amp):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return steps * batch_size / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or 'cpu'}, "
          f"device {args.device}, batch {args.batch_size}, channels_last {args.channels_last}")
    print(f"{'backbone':<10} {'size':>5} {'precision':>9} {'img/s':>9}")
    rows = []
    for backbone in args.backbones:
        for size in args.sizes:
            for precision in args.precisions:
                ips = training_throughput(backbone, size, args.batch_size, precision, args.device,
                                          channels_last=args.channels_last, steps=args.steps,
                                          warmup=args.warmup)
                rows.append({"backbone": backbone, "image_size": size, "precision": precision,
                             "images_per_s": round(ips, 1)})
                print(f"{backbone:<10} {size:>5} {precision:>9} {ips:>9.1f}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"device": args.device, "batch_size": args.batch_size,
                                        "threads": torch.get_num_threads(), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
