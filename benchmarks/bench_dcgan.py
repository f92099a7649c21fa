"""DCGAN training speed: our loop's step versus a plain pytorch/examples-style loop, same images, same process.

Usage: .venv/bin/python benchmarks/bench_dcgan.py [--n 1024] [--iters 10] [--workers 2] [--device auto]

Both train the `lungcancer-dcgan` preset (Reference A: 64x64, 3 channels, batch 128, one D and one G
step per batch) on the same ``--n`` phantom PNGs written to a temporary folder, and are timed over the
same number of iterations after a warm-up, data fetching included:

- reference: torchvision ``ImageFolder`` + ``DataLoader`` (shuffle, ``--workers`` processes, the
  example's default of 2) decoding and normalising the PNGs every epoch; fp32, default memory format,
  ``nn.BCELoss`` on the sigmoid outputs, D's real and fake losses back-propagated separately;
- ours: the images decoded once by ``data.load`` into one in-memory tensor, indexed by a seeded
  permutation per epoch, and ``train.GANSteps`` with the configured precision/memory format
  (``auto``: bf16 autocast + channels-last on CPUs with native bf16, and on CUDA).

Prints images/s of each and the ratio. The machine may be shared: run it once, not in a loop.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from cxr_utils import data, device as dev, phantom
from cxr_utils.models import build_discriminator, build_generator
from cxr_utils.train import GANSteps, make_config


def write_pngs(root: Path, n: int) -> None:
    """``n`` 64 px phantom radiographs as grayscale PNGs in one class folder."""
    folder = root / "xray"
    folder.mkdir(parents=True)
    for i, img in enumerate(phantom.generate(n, size=64, seed=0).images):
        Image.fromarray(img).save(folder / f"{i:05d}.png")


def reference_loop(root: Path, cfg, device: torch.device, iters: int, warmup: int, workers: int) -> float:
    """images/s of the pytorch/examples-style DCGAN loop."""
    import torchvision.datasets as dset
    import torchvision.transforms as T

    dataset = dset.ImageFolder(str(root), transform=T.Compose([
        T.Resize(cfg.image_size), T.CenterCrop(cfg.image_size), T.ToTensor(),
        T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, num_workers=workers)
    netG, netD = build_generator(cfg).to(device), build_discriminator(cfg).to(device)
    criterion = nn.BCELoss()
    opt_d = torch.optim.Adam(netD.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
    opt_g = torch.optim.Adam(netG.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    done, start = 0, None
    while done < warmup + iters:
        for real, _ in loader:
            if done == warmup:
                start = time.perf_counter()
            real = real.to(device)
            b = real.size(0)
            netD.zero_grad()
            label = torch.full((b,), 1.0, device=device)
            criterion(netD(real).view(-1), label).backward()
            fake = netG(torch.randn(b, cfg.latent_dim, 1, 1, device=device))
            label.fill_(0.0)
            criterion(netD(fake.detach()).view(-1), label).backward()
            opt_d.step()
            netG.zero_grad()
            label.fill_(1.0)
            criterion(netD(fake).view(-1), label).backward()
            opt_g.step()
            done += 1
            if done == warmup + iters:
                break
    _sync(device)
    return iters * cfg.batch_size / (time.perf_counter() - start)


def our_loop(root: Path, cfg, device: torch.device, iters: int, warmup: int) -> tuple[float, float]:
    """(images/s of our step with in-memory data, seconds of the one-off decode into memory)."""
    t0 = time.perf_counter()
    images = data.load(str(root), image_size=cfg.image_size, channels=cfg.channels, cache=False,
                       progress=False).images
    load_s = time.perf_counter() - t0
    amp = dev.resolve_precision(cfg.precision, device)
    fmt = torch.channels_last if dev.resolve_channels_last(cfg.channels_last, device, amp) else torch.contiguous_format
    dev.enable_fast_math(device)
    G = build_generator(cfg).to(device, memory_format=fmt)
    D = build_discriminator(cfg).to(device, memory_format=fmt)
    steps = GANSteps(G, D, cfg, device, amp)
    images = images.to(device)
    order = torch.Generator().manual_seed(0)
    per_epoch = len(images) // cfg.batch_size
    done, start = 0, None
    while done < warmup + iters:
        perm = torch.randperm(len(images), generator=order).to(device)
        for batch in perm[: per_epoch * cfg.batch_size].view(per_epoch, cfg.batch_size):
            if done == warmup:
                start = time.perf_counter()
            steps.d_step(images[batch].contiguous(memory_format=fmt))
            steps.g_step()
            done += 1
            if done == warmup + iters:
                break
    _sync(device)
    return iters * cfg.batch_size / (time.perf_counter() - start), load_s


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1024, help="PNGs on disk (default 1024)")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per loop (default 10)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference loop")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="our loop only")
    args = parser.parse_args()

    cfg = make_config("lungcancer-dcgan", precision=args.precision)
    device = dev.pick_device(args.device)
    amp = dev.resolve_precision(cfg.precision, device)
    ours_desc = dev.describe(device, amp, dev.resolve_channels_last(cfg.channels_last, device, amp))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; lungcancer-dcgan, batch "
          f"{cfg.batch_size}, {args.iters} timed iterations after {args.warmup} warm-up")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_pngs(root, args.n)
        torch.manual_seed(0)
        ref = reference_loop(root, cfg, device, args.iters, args.warmup, args.workers)
        print(f"reference (ImageFolder+DataLoader, {args.workers} workers, fp32): {ref:8.1f} img/s", flush=True)
        torch.manual_seed(0)
        ours, load_s = our_loop(root, cfg, device, args.iters, args.warmup)
        print(f"ours (in-memory tensor, {ours_desc}): {ours:8.1f} img/s "
              f"(one-off decode of {args.n} PNGs: {load_s:.1f} s)")
    print(f"ratio ours/reference: {ours / ref:.2f}x")


if __name__ == "__main__":
    main()
