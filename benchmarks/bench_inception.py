"""Inception-v3 (the FID network) throughput on this CPU: the TorchScript file as shipped vs frozen and
optimised for inference (``torch.jit.freeze`` + ``torch.jit.optimize_for_inference``: BatchNorm folded
into the convolutions, oneDNN layouts), in one process, alternating timed blocks so that the load is
shared. Reports images/s of each, their ratio, and the largest feature difference (the optimised form
must give the same features to float tolerance before it may replace the plain one).

    OMP_NUM_THREADS=2 python benchmarks/bench_inception.py --images 100 --rounds 2
"""

from __future__ import annotations

import argparse
import time

import torch

from cxr_utils import pretrained


def timed(net: torch.nn.Module, x: torch.Tensor, batch: int) -> tuple[float, torch.Tensor]:
    out = []
    t = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            out.append(net(x[i:i + batch]))
    return len(x) / (time.perf_counter() - t), torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    x = torch.rand(args.images, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 2 - 1
    plain = pretrained.fid_inception()
    optimised = torch.jit.optimize_for_inference(torch.jit.freeze(pretrained.fid_inception()))
    with torch.inference_mode():  # warm-up (the optimised module compiles its graph on the first call)
        plain(x[:2]), optimised(x[:2])
    rates: dict[str, list[float]] = {"plain": [], "optimised": []}
    feats = {}
    for _ in range(args.rounds):
        for name, net in (("plain", plain), ("optimised", optimised)):
            rate, feats[name] = timed(net, x, args.batch)
            rates[name].append(rate)
    best = {k: max(v) for k, v in rates.items()}
    diff = (feats["plain"] - feats["optimised"]).abs().max().item()
    print(f"threads {torch.get_num_threads()}, {args.images} images, batch {args.batch}, rounds {args.rounds}")
    for k, v in rates.items():
        print(f"{k:10s} images/s {', '.join(f'{r:.2f}' for r in v)} (best {best[k]:.2f})")
    print(f"ratio optimised / plain {best['optimised'] / best['plain']:.2f}x; max |feature difference| {diff:.2e}")


if __name__ == "__main__":
    main()
