"""Run folders: the one home of their format (docs/architecture.md), written and read back.

Everything a training run writes goes through here: opening the folder (refusing to clobber a run,
checking that a resume changes nothing that matters), the history (``stats.jsonl`` appended per epoch,
``history.csv``), the resumable checkpoint (``training-state.pt``) and inference weights
(``network-snapshot.pt``, ``network-final.pt``, and ``network-best.pt``, the lowest checkpoint KID when
training scores itself), the sample grids (``samples/epoch_NNN.png``), the
progress GIF and the training figures. Reading back: ``read_history``, ``load_run`` (``which`` =
final | best | snapshot), ``read_state``, ``sample``; a truncated, empty or foreign file is a one-line
RunError that names it and the run's intact alternatives.

``python -m cxr_utils generate RUN --n 1000 --out DIR [--seed S] [--grid] [--which final|best|snapshot]``
writes one PNG per sample.
PNGs are always 8-bit grayscale: a 3-channel generator trained on gray radiographs replicated to RGB
is written as the mean of its channels (a radiograph has no colour to keep).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import nn

from . import config as C
from . import images as I
from . import train_config
from .errors import ConfigError, RunError
from .paths import atomic_save, project_path

OPTIONS = train_config.OPTIONS  # "training_options.json"
STATS = "stats.jsonl"
HISTORY = "history.csv"
STATE = "training-state.pt"
NETWORK_FINAL = "network-final.pt"
NETWORK_SNAPSHOT = "network-snapshot.pt"
NETWORK_BEST = "network-best.pt"
SAMPLES = "samples"
# ``which`` generator weights to load: the newest (final, else the last snapshot), the best-scored
# (``network-best.pt``, written when training scores checkpoints), or the last snapshot itself.
WHICH = ("final", "best", "snapshot")


def network_payload(cfg: Any, G: nn.Module, G_ema: nn.Module | None, kimg: float, epoch: int) -> dict:
    """What inference needs: the config that rebuilds G, and its weights (EMA ones when kept)."""
    from .config import to_dict

    payload = {"config": to_dict(cfg), "G": G.state_dict(), "kimg": kimg, "epoch": epoch}
    if G_ema is not None:
        payload["G_ema"] = G_ema.state_dict()
    return payload


def network_path(run_dir: str | Path, which: str = "final") -> Path:
    """The inference weights of a run that ``which`` names.

    ``"final"``: ``network-final.pt``, else ``network-snapshot.pt`` (a run still training or stopped
    early); ``"best"``: ``network-best.pt`` (the lowest checkpoint KID; written only when the run was
    trained with ``score_every_kimg > 0``); ``"snapshot"``: ``network-snapshot.pt``. A missing folder or
    file is a one-line RunError saying what to do instead.
    """
    if which not in WHICH:
        raise ConfigError(f"which must be one of {list(WHICH)}, got {which!r}")
    run = project_path(run_dir)
    if not run.is_dir():
        raise RunError(f"run folder not found: {run_dir}")
    if which == "best":
        if (run / NETWORK_BEST).is_file():
            return run / NETWORK_BEST
        raise RunError(f"no {NETWORK_BEST} in {run_dir}: the run was not scored during training "
                       "(train with --score-every-kimg > 0), or use --which final")
    names = (NETWORK_SNAPSHOT,) if which == "snapshot" else (NETWORK_FINAL, NETWORK_SNAPSHOT)
    for name in names:
        if (run / name).is_file():
            return run / name
    raise RunError(f"no {' or '.join(names)} in {run_dir}: has the run saved a checkpoint?")


def _readable(path: Path) -> bool:
    """Whether ``path`` is a checkpoint ``torch.load`` reads (weights only)."""
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated, empty, foreign: all mean "not usable"
        return False
    return True


def describe_error(exc: BaseException, limit: int = 160) -> str:
    """``exc`` on one line (torch's load and ``load_state_dict`` messages span lines), at most ``limit``
    characters: an empty file's EOFError reads "EOFError: empty or truncated"."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = text.split(". ")[0].rstrip(".")  # torch's zip reader appends paragraphs of advice
    if isinstance(exc, EOFError) or not text:
        text = "empty or truncated"
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _alternatives(run: Path, broken: str) -> str:
    """The other readable weight files of ``run`` as ``--which`` advice."""
    which = {NETWORK_FINAL: "final", NETWORK_BEST: "best", NETWORK_SNAPSHOT: "snapshot"}
    intact = [f"{name} is intact (--which {which[name]})" for name in (NETWORK_SNAPSHOT, NETWORK_BEST, NETWORK_FINAL)
              if name != broken and (run / name).is_file() and _readable(run / name)]
    return "; ".join(intact) if intact else "no other weight file of this run is readable"


def read_network(run_dir: str | Path, which: str = "final") -> tuple[Path, dict[str, Any]]:
    """The path and payload (``config``, ``G``, ``G_ema`` when kept, ``kimg``, ``epoch``) of a run's weights.

    A truncated, empty or foreign file is a one-line RunError naming it and the run's intact
    alternatives, instead of torch's multi-line ``PytorchStreamReader``/``EOFError`` traceback.
    """
    path = network_path(run_dir, which)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RunError(f"cannot read {path.name} in {run_dir} (truncated, empty or not a checkpoint: "
                       f"{describe_error(exc)}); "
                       f"{_alternatives(path.parent, path.name)}") from None
    missing = [k for k in ("config", "G") if not isinstance(payload, dict) or k not in payload]
    if missing:
        raise RunError(f"{path.name} in {run_dir} is not a generator checkpoint (no {', '.join(missing)}); "
                       f"{_alternatives(path.parent, path.name)}")
    return path, payload


@C.typed_keywords
def load_run(run_dir: str | Path, device: str | torch.device = "cpu",
             which: Literal["final", "best", "snapshot"] = "final") -> tuple[Any, nn.Module]:
    """``(TrainConfig, G)`` of a run, G in eval mode with its EMA weights when the run kept them.

    ``which`` is ``"final"`` (default: ``network-final.pt``, else the last snapshot), ``"best"``
    (``network-best.pt``, the lowest checkpoint KID) or ``"snapshot"``. Unreadable files, weights that
    do not fit the saved config (another model family or shape) and missing keys are one-line RunErrors.
    """
    from .models import build_generator

    path, payload = read_network(run_dir, which)
    try:
        cfg = train_config.from_dict(payload["config"])
        G = build_generator(cfg)
        G.load_state_dict(payload.get("G_ema", payload["G"]))
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, ConfigError) as exc:
        raise RunError(f"{path.name} in {run_dir} does not fit its own config (another model family or shape: "
                       f"{describe_error(exc)}); {_alternatives(path.parent, path.name)}") from None
    return cfg, G.to(device).eval().requires_grad_(False)


def read_state(run_dir: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """``training-state.pt`` of ``run_dir`` for a resume; a truncated, empty or foreign file is a
    one-line RunError naming it and what is left: the intact ``network-snapshot.pt`` (inference
    weights only: generate/evaluate with ``--which snapshot``) or a restart with ``--overwrite``."""
    path = run_dir / STATE
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise RunError(unusable_state(run_dir, f"truncated, empty or not a checkpoint: {describe_error(exc)}")) from None
    if not isinstance(state, dict):
        raise RunError(unusable_state(run_dir, f"holds a {type(state).__name__}, not a training state"))
    return state


def unusable_state(run_dir: Path, why: str) -> str:
    """The one-line message for a ``training-state.pt`` a resume cannot use, and what is left."""
    snapshot = run_dir / NETWORK_SNAPSHOT
    if snapshot.is_file() and _readable(snapshot):
        left = (f"{NETWORK_SNAPSHOT} is intact (generator weights only; generate or evaluate with --which snapshot)"
                ", or restart with --overwrite (overwrite=True)")
    else:
        left = f"no intact {NETWORK_SNAPSHOT} either; restart with --overwrite (overwrite=True)"
    return f"cannot resume {run_dir}: {STATE} is unusable ({why}); {left}"


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


def write_best(run_dir: Path, cfg: Any, G: nn.Module, G_ema: nn.Module | None, kimg: float, epoch: int,
               score: dict[str, Any]) -> None:
    """``network-best.pt``: the inference weights with the lowest checkpoint score so far, and the
    score itself (``{"kid", "kid_std", "fid", "extractor", "n", "kimg", "iteration"}``); atomic."""
    atomic_save({**network_payload(cfg, G, G_ema, kimg, epoch), "score": score}, run_dir / NETWORK_BEST)


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
    """losses.png, scores.png, with checkpoint scoring scores_kid.png, and with augmentation augment.png
    (``ada_target`` drawn when adaptive)."""
    if not history:
        return
    from . import plots  # matplotlib only once figures are due

    plots.training_losses(history, run_dir / "losses.png")
    plots.training_scores(history, run_dir / "scores.png")
    if any(r.get("kid") is not None for r in history):
        plots.checkpoint_kid(history, run_dir / "scores_kid.png")
    if any(r.get("augment_p") is not None for r in history):
        plots.augment_probability(history, run_dir / "augment.png", ada_target)


# ------------------------------------------------------------------------------------------------- CLI


def cli_add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run folder (holds network-final.pt or network-snapshot.pt)")
    parser.add_argument("--which", default="final", choices=WHICH,
                        help="weights: final (default; the last snapshot while training), best (network-best.pt, "
                             "lowest checkpoint KID), snapshot")
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
    cfg, G = load_run(args.run, device=pick_device(args.device), which=args.which)
    images = sample(G, args.n, seed=args.seed, batch=args.batch)
    out = project_path(args.out)
    paths = write_pngs(images, out)
    print(f"wrote {len(paths)} PNGs ({cfg.image_size}x{cfg.image_size} grayscale) to {out}")
    if args.grid:
        print(f"wrote {I.save_png(I.grid(images[:64], padding=2, pad_value=255, gray=True), out / 'grid.png')}")
    return 0
