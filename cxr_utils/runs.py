"""Run folders: their file names, atomic writes, and reading trained generators back.

``python -m cxr_utils generate RUN --n 1000 --out DIR [--seed S] [--grid]`` writes one PNG per sample.
PNGs are always 8-bit grayscale: a 3-channel generator trained on gray radiographs replicated to RGB
is written as the mean of its channels (a radiograph has no colour to keep).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from .errors import RunError
from .paths import project_path

OPTIONS = "training_options.json"
STATS = "stats.jsonl"
HISTORY = "history.csv"
STATE = "training-state.pt"
NETWORK_FINAL = "network-final.pt"
NETWORK_SNAPSHOT = "network-snapshot.pt"
SAMPLES = "samples"


def atomic_write(path: str | Path, write: Callable[[IO], None], binary: bool = True) -> None:
    """Write a file that never exists half-written under ``path``, even on SIGKILL or power loss.

    ``write`` fills a temporary file in the same folder, which is fsynced and then renamed over ``path``
    (atomic on POSIX); the folder is fsynced so the rename itself is durable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def network_payload(cfg: Any, G: nn.Module, G_ema: nn.Module | None, kimg: float, epoch: int) -> dict:
    """What inference needs: the config that rebuilds G, and its weights (EMA ones when kept)."""
    from .config import to_dict

    payload = {"config": to_dict(cfg), "G": G.state_dict(), "kimg": kimg, "epoch": epoch}
    if G_ema is not None:
        payload["G_ema"] = G_ema.state_dict()
    return payload


def network_path(run_dir: str | Path) -> Path:
    """The newest inference weights of a run: ``network-final.pt``, else ``network-snapshot.pt``."""
    run = project_path(run_dir)
    if not run.is_dir():
        raise RunError(f"run folder not found: {run_dir}")
    for name in (NETWORK_FINAL, NETWORK_SNAPSHOT):
        if (run / name).is_file():
            return run / name
    raise RunError(f"no {NETWORK_FINAL} or {NETWORK_SNAPSHOT} in {run_dir}: has the run saved a checkpoint?")


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Any, nn.Module]:
    """``(TrainConfig, G)`` of a run, G in eval mode with its EMA weights when the run kept them."""
    from .config import apply_overrides
    from .models import build_generator
    from .train import TrainConfig

    path = network_path(run_dir)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file; say which
        raise RunError(f"cannot read {path.name} in {run_dir}: {type(exc).__name__}") from None
    cfg = apply_overrides(TrainConfig(), payload["config"])
    G = build_generator(cfg)
    G.load_state_dict(payload.get("G_ema", payload["G"]))
    return cfg, G.to(device).eval().requires_grad_(False)


@torch.no_grad()
def sample(G: nn.Module, n: int, seed: int = 0, batch: int = 256,
           device: str | torch.device | None = None) -> torch.Tensor:
    """``n`` images in [-1, 1] on the CPU, float32.

    The latents come from a CPU generator seeded with ``seed``, so the same seed gives the same images
    whatever the device or ``batch``.
    """
    device = torch.device(device) if device is not None else next(G.parameters()).device
    z = torch.randn(n, G.latent_dim, generator=torch.Generator().manual_seed(seed))
    was_training = G.training
    G.eval()
    try:
        out = [G(chunk.to(device)).float().cpu() for chunk in z.split(batch)]
    finally:
        G.train(was_training)
    return torch.cat(out).clamp_(-1, 1) if out else torch.empty(0)


def to_gray_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W) uint8, channels averaged."""
    gray = images.float().mean(1)
    return ((gray + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def write_pngs(images: torch.Tensor, out_dir: str | Path, prefix: str = "sample") -> list[Path]:
    """One grayscale PNG per image, numbered from 0."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(to_gray_uint8(images)):
        paths.append(out / f"{prefix}_{i:05d}.png")
        Image.fromarray(img).save(paths[-1])
    return paths


def write_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """A grayscale grid PNG of ``images`` (at most 64 shown), 2-pixel white gutters."""
    from torchvision.utils import make_grid

    shown = images[:64].float().mean(1, keepdim=True)
    nrow = nrow or max(1, int(np.ceil(np.sqrt(len(shown)))))
    grid = make_grid(shown, nrow=nrow, padding=2, pad_value=1.0)
    Image.fromarray(to_gray_uint8(grid[None, :1])[0]).save(path)
    return Path(path)


# ------------------------------------------------------------------------------------------------- CLI


def cli_add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run folder (holds network-final.pt or network-snapshot.pt)")
    parser.add_argument("--n", type=int, default=1000, help="number of images (default 1000)")
    parser.add_argument("--out", required=True, help="output folder for the PNGs")
    parser.add_argument("--seed", type=int, default=0, help="latent seed (default 0)")
    parser.add_argument("--grid", action="store_true", help="also write grid.png of the first 64")
    parser.add_argument("--batch", type=int, default=256, help="generator batch size (default 256)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:i] (default auto)")


def cli_run(args: argparse.Namespace) -> int:
    from .device import pick_device

    if args.n < 1 or args.batch < 1:
        raise RunError("--n and --batch must be >= 1")
    cfg, G = load_run(args.run, device=pick_device(args.device))
    images = sample(G, args.n, seed=args.seed, batch=args.batch)
    out = project_path(args.out)
    paths = write_pngs(images, out)
    print(f"wrote {len(paths)} PNGs ({cfg.image_size}x{cfg.image_size} grayscale) to {out}")
    if args.grid:
        print(f"wrote {write_grid(images, out / 'grid.png')}")
    return 0
