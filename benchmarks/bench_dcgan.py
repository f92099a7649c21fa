"""DCGAN training speed: our loop's step versus a plain pytorch/examples-style loop, same images, same process.

Usage: .venv/bin/python benchmarks/bench_dcgan.py [--n 1024] [--rounds 5] [--iters 2] [--workers 2] [--device auto]

Both train the `lungcancer-dcgan` preset (Reference A: 64x64, 3 channels, batch 128, one D and one G
step per batch) on the same ``--n`` phantom PNGs written to a temporary folder, and are timed over the
same iterations after a warm-up, data fetching included, in alternating blocks (``--rounds`` x
``--iters``) so that a load spike from other processes affects both alike:

- reference: torchvision ``ImageFolder`` + ``DataLoader`` (shuffle, ``--workers`` processes, the
  example's default of 2) decoding and normalising the PNGs every epoch; fp32, default memory format,
  ``nn.BCELoss`` on the sigmoid outputs, D's real and fake losses back-propagated separately;
- ours: the images decoded once by ``data.load`` into one in-memory tensor, indexed by a seeded
  permutation per epoch, and ``losses.GANSteps`` with the configured precision/memory format
  (``auto``: bf16 autocast + channels-last on CPUs with native bf16, and on CUDA).

Prints images/s of each and the ratio. The machine may be shared: run it once, not in a loop.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
from PIL import Image
from torch import nn

from cxr_utils import data, device as dev, phantom
from cxr_utils.losses import GANSteps
from cxr_utils.models import build_discriminator, build_generator
from cxr_utils.train import make_config


def write_pngs(root: Path, n: int) -> None:
    """``n`` 64 px phantom radiographs as grayscale PNGs in one class folder."""
    folder = root / "xray"
    folder.mkdir(parents=True)
    for i, img in enumerate(phantom.generate(n, size=64, seed=0).images):
        Image.fromarray(img).save(folder / f"{i:05d}.png")


def reference_step(root: Path, cfg, device: torch.device, workers: int) -> Callable[[], None]:
    """One iteration of the pytorch/examples-style DCGAN loop per call (the DataLoader runs on)."""
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
    batches = _forever(lambda: iter(loader))

    def step() -> None:
        real = next(batches)[0].to(device)
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

    return step


def our_step(root: Path, cfg, device: torch.device) -> tuple[Callable[[], None], float]:
    """(one iteration of our loop per call, seconds of the one-off decode into memory)."""
    t0 = time.perf_counter()
    images = data.load(str(root), image_size=cfg.image_size, channels=cfg.channels, cache=False,
                       progress=False).images
    load_s = time.perf_counter() - t0
    amp = dev.resolve_precision(cfg.precision, device)
    fmt = torch.channels_last if dev.resolve_channels_last(cfg.channels_last, device, amp) else torch.contiguous_format
    dev.enable_fast_math(device)
    steps = GANSteps(build_generator(cfg).to(device, memory_format=fmt),
                     build_discriminator(cfg).to(device, memory_format=fmt), cfg, device, amp)
    images = images.to(device)
    order = torch.Generator().manual_seed(0)
    per_epoch = len(images) // cfg.batch_size

    def epoch() -> Iterator[torch.Tensor]:
        perm = torch.randperm(len(images), generator=order).to(device)
        return iter(perm[: per_epoch * cfg.batch_size].view(per_epoch, cfg.batch_size))

    batches = _forever(epoch)

    def step() -> None:
        steps.d_step(images[next(batches)].contiguous(memory_format=fmt))
        steps.g_step()

    return step, load_s


def _forever(new_epoch: Callable[[], Iterator]) -> Iterator:
    while True:
        yield from new_epoch()


def _timed(step: Callable[[], None], iters: int, device: torch.device) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1024, help="PNGs on disk (default 1024)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timed blocks (default 5)")
    parser.add_argument("--iters", type=int, default=2, help="iterations per block and loop (default 2)")
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
          f"{cfg.batch_size}; {args.rounds} x {args.iters} timed iterations per loop, after {args.warmup} warm-up")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_pngs(root, args.n)
        torch.manual_seed(0)
        ref = reference_step(root, cfg, device, args.workers)
        ours, load_s = our_step(root, cfg, device)
        for step in (ref, ours):
            _timed(step, args.warmup, device)
        # Alternate short blocks so that load from other processes hits both loops alike.
        t_ref = t_ours = 0.0
        for _ in range(args.rounds):
            t_ref += _timed(ref, args.iters, device)
            t_ours += _timed(ours, args.iters, device)
    n_img = args.rounds * args.iters * cfg.batch_size
    print(f"reference (ImageFolder+DataLoader, {args.workers} workers, fp32): {n_img / t_ref:8.1f} img/s")
    print(f"ours (in-memory tensor, {ours_desc}): {n_img / t_ours:8.1f} img/s "
          f"(one-off decode of {args.n} PNGs: {load_s:.1f} s)")
    print(f"ratio ours/reference: {t_ref / t_ours:.2f}x")


if __name__ == "__main__":
    main()
