"""Run folders: the one home of their format (docs/architecture.md), written and read back.

Everything a training run writes goes through here: opening the folder (refusing to clobber a run,
checking that a resume changes nothing that matters), the history (``stats.jsonl`` appended per epoch,
``history.csv``), the resumable checkpoint (``training-state.pt``) and inference weights
(``network-snapshot.pt``, ``network-final.pt``), the sample grids (``samples/epoch_NNN.png``), the
progress GIF and the training figures. Reading back: ``read_history``, ``load_run``, ``sample``.

``python -m cxr_utils generate RUN --n 1000 --out DIR [--seed S] [--grid]`` writes one PNG per sample.
PNGs are always 8-bit grayscale: a 3-channel generator trained on gray radiographs replicated to RGB
is written as the mean of its channels (a radiograph has no colour to keep).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from . import config as C
from . import images as I
from . import train_config
from .errors import ConfigError, RunError
from .paths import project_path

OPTIONS = train_config.OPTIONS  # "training_options.json"
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
    from .models import build_generator

    path = network_path(run_dir)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file; say which
        raise RunError(f"cannot read {path.name} in {run_dir}: {type(exc).__name__}") from None
    cfg = train_config.from_dict(payload["config"])
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


def write_pngs(images: torch.Tensor, out_dir: str | Path, prefix: str = "sample") -> list[Path]:
    """One grayscale PNG per image, numbered from 0."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(I.to_gray_uint8(images)):
        paths.append(out / f"{prefix}_{i:05d}.png")
        Image.fromarray(img).save(paths[-1])
    return paths


# ------------------------------------------------------------------------------- writing a training run


def open_run_dir(run_dir: Path, cfg: Any, resume: bool, overwrite: bool) -> None:
    """Refuse to train into an existing run unless resuming (compatibly) or overwriting it."""
    if resume and overwrite:
        raise ConfigError("resume and overwrite exclude each other")
    options = run_dir / OPTIONS
    if options.exists() and resume:
        if not (run_dir / STATE).exists():
            raise RunError(f"cannot resume {run_dir}: it has no {STATE}")
        C.check_same_settings(C.to_dict(train_config.load(options)), C.to_dict(cfg), train_config.RESUMABLE_CHANGES,
                              "a run", run_dir, advice="resume with the saved settings or train into another folder")
        for torn in run_dir.glob(".*.tmp"):  # left by a kill during atomic_save; never the checkpoint
            torn.unlink()
    elif options.exists() and overwrite:
        n_files = sum(1 for p in run_dir.rglob("*") if p.is_file())
        print(f"overwrite=True: deleting the previous run {run_dir} ({n_files} files)")
        shutil.rmtree(run_dir)
    elif options.exists():
        raise RunError(f"{run_dir} already holds a run; resume it (--resume) or replace it (--overwrite)")
    elif resume:
        raise RunError(f"nothing to resume: {run_dir} holds no run ({OPTIONS} missing)")
    (run_dir / SAMPLES).mkdir(parents=True, exist_ok=True)


def write_options(run_dir: Path, cfg: Any) -> None:
    C.save_json(cfg, run_dir / OPTIONS)


def read_history(run_dir: str | Path, n: int | None = None) -> list[dict[str, Any]]:
    """The first ``n`` rows of ``stats.jsonl`` (all when None); a torn last line is ignored."""
    path = Path(run_dir) / STATS
    rows: list[dict[str, Any]] = []
    if path.exists():
        for line in path.read_text().splitlines():
            if n is not None and len(rows) >= n:
                break
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def open_stats(run_dir: Path) -> IO:
    """``stats.jsonl`` for appending; the loop writes each epoch's rows with :func:`append_stats`."""
    return open(run_dir / STATS, "a")


def append_stats(stats_file: IO, rows: list[dict[str, Any]], durable: bool = False) -> None:
    """One JSON line per history row, flushed (and fsynced when ``durable``: the rows a checkpoint
    counts must outlive a crash)."""
    stats_file.writelines(json.dumps(r) + "\n" for r in rows)
    stats_file.flush()
    if durable:
        os.fsync(stats_file.fileno())


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """stats.jsonl rewritten to exactly ``history`` (on resume), and history.csv."""
    with open(run_dir / STATS, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in history)
    write_csv(run_dir, history)


def write_csv(run_dir: Path, history: list[dict[str, Any]]) -> None:
    keys = list(dict.fromkeys(k for r in history for k in r))
    with open(run_dir / HISTORY, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


def write_checkpoint(run_dir: Path, state: dict[str, Any], cfg: Any, G: nn.Module, G_ema: nn.Module | None,
                     kimg: float, epoch: int) -> None:
    """The resumable state, then the inference weights; each file replaced atomically."""
    atomic_save(state, run_dir / STATE)
    atomic_save(network_payload(cfg, G, G_ema, kimg, epoch), run_dir / NETWORK_SNAPSHOT)


def write_final(run_dir: Path) -> None:
    """``network-final.pt``: the last snapshot's weights."""
    atomic_save(torch.load(run_dir / NETWORK_SNAPSHOT, map_location="cpu", weights_only=True),
                run_dir / NETWORK_FINAL)


def write_samples(run_dir: Path, epoch: int, images: torch.Tensor) -> Path:
    """The fixed-latent sample grid of ``epoch``: 8 per row, 2-pixel black gutters, colour kept."""
    picture = I.grid(images.cpu(), nrow=8, padding=2, pad_value=0)
    return I.save_png(picture, run_dir / SAMPLES / f"epoch_{epoch:03d}.png")


def write_progress_gif(run_dir: Path, seconds_per_frame: float = 0.4) -> Path | None:
    """``progress.gif``: the sample grids in epoch order, looping; the last frame is held three times longer."""
    frames = sorted((run_dir / SAMPLES).glob("epoch_*.png"))
    if not frames:
        return None
    durations = [1000 * seconds_per_frame] * len(frames)
    durations[-1] *= 3
    return I.save_gif([np.asarray(Image.open(f)) for f in frames], run_dir / "progress.gif", durations)


def write_figures(run_dir: Path, history: list[dict[str, Any]], ada_target: float | None) -> None:
    """losses.png, scores.png and, with augmentation, augment.png (``ada_target`` drawn when adaptive)."""
    if not history:
        return
    from . import plots  # matplotlib only once figures are due

    plots.training_losses(history, run_dir / "losses.png")
    plots.training_scores(history, run_dir / "scores.png")
    if any(r.get("augment_p") is not None for r in history):
        plots.augment_probability(history, run_dir / "augment.png", ada_target)


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
        print(f"wrote {I.save_png(I.grid(images[:64], padding=2, pad_value=255, gray=True), out / 'grid.png')}")
    return 0
