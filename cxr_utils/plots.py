"""Figures of image data: grids, per-class montages, mean images, intensity histograms, class balance, sizes.

Every figure function returns a matplotlib ``Figure`` (a notebook cell displays it) and also saves it
when ``path`` is given. Figures are closed in pyplot as soon as they are made, so scripts do not
accumulate open figures and a notebook shows each one exactly once (as the cell's value). Grayscale
images are drawn with ``cmap="gray"`` and a fixed range, so brightness is comparable across panels.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import matplotlib

if ("MPLBACKEND" not in os.environ and "ipykernel" not in sys.modules and sys.platform.startswith("linux")
        and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))):
    matplotlib.use("Agg")  # headless: never try to open a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from .images import grid, to_uint8  # noqa: E402

if TYPE_CHECKING:
    from .data import CXRDataset, DataReport


def figure(width: float, height: float) -> Figure:
    """A pyplot figure (so notebooks render it), closed at once (so nothing else shows or keeps it)."""
    fig = plt.figure(figsize=(width, height), layout="constrained")
    plt.close(fig)
    return fig


def finish(fig: Figure, path: str | Path | None) -> Figure:
    """Save ``fig`` as a 120 dpi PNG at ``path`` (folders created) when a path is given; return it."""
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def show_gray(ax, image: np.ndarray) -> None:
    """Draw an H x W uint8-range image (0..255) on ``ax`` in grey, pixel for pixel, without ticks."""
    ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def montage_by_class(ds: CXRDataset, per_class: int = 8, path: str | Path | None = None) -> Figure:
    """One row per class: its first ``per_class`` images, labelled with the class size."""
    k = len(ds.class_names)
    fig = figure(1.1 * per_class + 1.2, 1.25 * k + 0.5)
    axes = fig.subplots(k, 1, squeeze=False)[:, 0]
    for label, (ax, name) in enumerate(zip(axes, ds.class_names)):
        idx = (ds.labels == label).nonzero().flatten()
        if len(idx):
            show_gray(ax, grid(ds.images[idx[:per_class]], nrow=per_class))
        else:
            ax.set_axis_off()
        ax.set_ylabel(f"{name}\n(n={len(idx)})", rotation=0, ha="right", va="center")
    fig.suptitle(f"{ds.source}: first {per_class} images per class")
    return finish(fig, path)


def mean_image_by_class(ds: CXRDataset, path: str | Path | None = None) -> Figure:
    """Mean image of each class (fixed gray scale); with two classes also their difference.

    A difference concentrated outside the lungs (markers, borders, text) hints at a shortcut a
    classifier or GAN could learn instead of anatomy.
    """
    means = []
    for label in range(len(ds.class_names)):
        sel = ds.images[ds.labels == label, 0]
        means.append(sel.mean(0).numpy() if len(sel) else None)
    two = len(means) == 2 and all(m is not None for m in means)
    panels = len(means) + int(two)
    fig = figure(3.0 * panels, 3.3)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for ax, name, mean in zip(axes, ds.class_names, means):
        if mean is None:
            ax.set_axis_off()
        else:
            show_gray(ax, (mean * 0.5 + 0.5) * 255)
        ax.set_title(f"mean {name}")
    if two:
        diff = (means[1] - means[0]) * 0.5 * 255  # in 8-bit grey levels
        lim = max(float(np.abs(diff).max()), 1e-6)
        im = axes[-1].imshow(diff, cmap="RdBu_r", vmin=-lim, vmax=lim)
        axes[-1].set_xticks([])
        axes[-1].set_yticks([])
        axes[-1].set_title(f"{ds.class_names[1]} - {ds.class_names[0]}")
        fig.colorbar(im, ax=axes[-1], shrink=0.8, label="grey levels")
    return finish(fig, path)


def intensity_histograms(ds: CXRDataset, path: str | Path | None = None) -> Figure:
    """Pixel-intensity distribution (8-bit grey levels, density) per class, overlaid."""
    fig = figure(6.5, 3.8)
    ax = fig.subplots()
    bins = np.arange(257)
    for label, name in enumerate(ds.class_names):
        sel = ds.images[ds.labels == label, 0]
        if not len(sel):
            continue
        values = to_uint8(sel.unsqueeze(1)).numpy().ravel()
        hist, _ = np.histogram(values, bins=bins, density=True)
        ax.step(bins[:-1], hist, where="post", label=f"{name} (n={len(sel)}, mean {values.mean():.0f})")
    ax.set_xlim(0, 255)
    ax.set_xlabel("grey level")
    ax.set_ylabel("density")
    ax.set_title(f"{ds.source}: intensity histogram per class")
    ax.legend()
    return finish(fig, path)


def data_report_figures() -> dict[str, Callable[[CXRDataset, Path], Figure]]:
    """The figures of a data report, by file name: ``montage.png`` and ``histograms.png``."""
    return {"montage.png": lambda ds, path: montage_by_class(ds, path=path),
            "histograms.png": lambda ds, path: intensity_histograms(ds, path=path)}


def write_data_report(ds: CXRDataset, out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.json``, ``report.txt``, ``montage.png`` and ``histograms.png`` into ``out_dir``.

    The text and JSON come from :func:`cxr_utils.data.write_report`; the figures from this module.
    Returns ``{file name: path}``; an uncreatable folder is a one-line ``DataError``.
    """
    from .data import write_report

    return write_report(ds, out_dir, figures=data_report_figures())


def class_balance(ds: CXRDataset, path: str | Path | None = None) -> Figure:
    """Images per class, with counts and shares written on the bars."""
    counts = np.bincount(ds.labels.numpy(), minlength=len(ds.class_names))[:len(ds.class_names)]
    fig = figure(max(3.5, 1.3 * len(counts) + 1.5), 3.5)
    ax = fig.subplots()
    bars = ax.bar(ds.class_names, counts, color="tab:blue")
    total = max(int(counts.sum()), 1)
    ax.bar_label(bars, labels=[f"{c} ({100 * c / total:.0f}%)" for c in counts], padding=2)
    ax.set_ylabel("images")
    ax.set_ylim(0, max(int(counts.max()), 1) * 1.15)
    ax.set_title(f"{ds.source}: class balance (n={total})")
    return finish(fig, path)


def size_distribution(report: DataReport, path: str | Path | None = None, max_bars: int = 12) -> Figure:
    """Original image sizes (bars when few distinct, else a width-height scatter) and bit depths."""
    fig = figure(9, 3.6)
    ax_size, ax_bits = fig.subplots(1, 2, width_ratios=[2, 1])
    sizes = sorted(report.original_sizes.items(), key=lambda kv: -kv[1])
    if len(sizes) <= max_bars:
        ax_size.barh([s for s, _ in sizes][::-1], [n for _, n in sizes][::-1], color="tab:blue")
        ax_size.set_xlabel("images")
    else:
        wh = np.array([[int(v) for v in s.split("x")] for s, _ in sizes])
        n = np.array([c for _, c in sizes])
        ax_size.scatter(wh[:, 0], wh[:, 1], s=10 + 90 * n / n.max(), alpha=0.5)
        ax_size.set_xlabel("width (px)")
        ax_size.set_ylabel("height (px)")
    ax_size.set_title(f"original size ({len(sizes)} distinct)")
    depths = sorted(report.bit_depths.items())
    ax_bits.bar([d for d, _ in depths], [n for _, n in depths], color="tab:gray")
    ax_bits.set_title("bit depth")
    ax_bits.set_ylabel("images")
    return finish(fig, path)


# ----------------------------------------------------------------------------------------------
# training figures: per-iteration curves from a run's history rows (``stats.jsonl``), epoch grids,
# the progress GIF, real vs generated


def _series(history: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(iteration, value) where ``key`` was recorded (G skips iterations when n_dis > 1)."""
    pts = [(r["iteration"], r[key]) for r in history if r.get(key) is not None and math.isfinite(r[key])]
    if not pts:
        return np.empty(0), np.empty(0)
    it, val = zip(*pts)
    return np.asarray(it), np.asarray(val, dtype=float)


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` points (shorter at the start), so a noisy GAN curve shows a trend."""
    if window <= 1 or len(values) < window:
        return values
    c = np.cumsum(np.insert(values, 0, 0.0))
    head = c[1:window] / np.arange(1, window)
    return np.concatenate([head, (c[window:] - c[:-window]) / window])


def _training_curves(history: list[dict], keys: dict[str, str], ylabel: str, title: str) -> Figure:
    fig = figure(9, 4)
    ax = fig.subplots()
    window = max(1, len(history) // 50)
    for key, label in keys.items():
        it, val = _series(history, key)
        if len(it):
            (line,) = ax.plot(it, val, lw=0.6, alpha=0.35)
            ax.plot(it, _moving_average(val, window), lw=1.6, color=line.get_color(), label=label)
    starts = [r["iteration"] for i, r in enumerate(history) if i and r["epoch"] != history[i - 1]["epoch"]]
    for x in starts[:: max(1, len(starts) // 25)]:
        ax.axvline(x, color="0.88", lw=0.6, zorder=0)
    ax.set_xlabel("iteration (faint lines: epochs)")
    ax.set_ylabel(ylabel)
    ax.set_title(title + (f"; bold: mean of {window} iterations" if window > 1 else ""))
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    return fig


def training_losses(history: list[dict], path: str | Path | None = None) -> Figure:
    """Discriminator and generator loss per iteration."""
    fig = _training_curves(history, {"loss_D": "D loss", "loss_G": "G loss"}, "loss", "GAN losses")
    return finish(fig, path)


def training_scores(history: list[dict], path: str | Path | None = None) -> Figure:
    """D(x) and D(G(z)) per iteration, as probabilities of 'real' (sigmoid of D's score).

    D(G(z)) is shown twice, as in pytorch/examples: scored in the D step (before D's update) and in
    the G step (after it), on the same fakes."""
    keys = {"D_x": "D(x)", "D_G_z1": "D(G(z)) before D update", "D_G_z2": "D(G(z)) after D update (G step)"}
    fig = _training_curves(history, keys, "D output (probability real)", "Discriminator scores")
    ax = fig.axes[0]
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    ax.set_ylim(-0.02, 1.02)
    return finish(fig, path)


def checkpoint_kid(history: list[dict], path: str | Path | None = None) -> Figure:
    """The checkpoint KID over kimg (history rows with ``kid``; band: +- ``kid_std`` over KID subsets),
    the best (lowest) marked: the one kept as ``network-best.pt``. Lower is better."""
    rows = [r for r in history if r.get("kid") is not None and math.isfinite(r["kid"])]
    fig = figure(9, 3.6)
    ax = fig.subplots()
    if rows:
        x = np.array([r["kimg"] for r in rows])
        y = np.array([r["kid"] for r in rows])
        sd = np.array([r.get("kid_std") or 0.0 for r in rows])
        extractor = rows[-1].get("score_extractor", "")
        ax.fill_between(x, y - sd, y + sd, alpha=0.2, lw=0)
        ax.plot(x, y, marker="o", ms=3, lw=1.2, label=f"KID ({extractor} features)" if extractor else "KID")
        i = int(np.argmin(y))
        ax.plot([x[i]], [y[i]], marker="*", ms=12, color="C3", ls="none",
                label=f"best: {y[i]:.4g} at {x[i]:.2f} kimg")
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("kimg (real images shown / 1000)")
    ax.set_ylabel("KID (lower is better)")
    ax.set_title("Checkpoint score of the (EMA) generator")
    ax.grid(alpha=0.3)
    return finish(fig, path)


def augment_probability(history: list[dict], path: str | Path | None = None, target: float | None = 0.6,
                        title: str = "") -> Figure:
    """ADA's augmentation probability p and its overfitting measure r_t = E[sign(D(real))] over kimg.

    r_t is measured every few D steps; ADA raises p while r_t is above ``target`` and lowers it below."""
    fig = figure(9, 3.6)
    ax = fig.subplots()
    for key, label in (("augment_p", "p (augmentation probability)"), ("augment_rt", "r_t = E[sign(D(real))]")):
        pts = [(r["kimg"], r[key]) for r in history if r.get(key) is not None and math.isfinite(r[key])]
        if pts:
            ax.plot(*zip(*pts), lw=1.2, label=label)
    if target is not None:
        ax.axhline(target, color="k", ls="--", lw=0.8, label=f"r_t target {target}")
    ax.set_xlabel("kimg (real images shown / 1000)")
    ax.set_ylim(-1.02, 1.02)
    kind = "ADA" if target is not None else "fixed-p augmentation (DiffAugment)"
    ax.set_title(f"{kind}: {title}" if title else f"{kind}: probability p and overfitting measure r_t")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    return finish(fig, path)


def epoch_grids(sample_dir: str | Path, epochs: list[int] | tuple[int, ...],
                path: str | Path | None = None) -> Figure | None:
    """The fixed-noise sample grids ``epoch_NNN.png`` of ``epochs`` side by side (those that exist)."""
    found = [(e, Path(sample_dir) / f"epoch_{e:03d}.png") for e in epochs]
    found = [(e, p) for e, p in found if p.exists()]
    if not found:
        return None
    fig = figure(4.2 * len(found), 4.5)
    for ax, (epoch, png) in zip(fig.subplots(1, len(found), squeeze=False)[0], found):
        ax.imshow(np.asarray(Image.open(png).convert("L")), cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"epoch {epoch}")
        ax.set_axis_off()
    return finish(fig, path)


def real_vs_generated(real: torch.Tensor, fake: torch.Tensor, n: int = 32,
                      path: str | Path | None = None) -> Figure:
    """``n`` real and ``n`` generated images (in [-1, 1]) as two grayscale grids side by side."""
    count = min(n, len(real), len(fake))
    ncol = 8 if count % 8 == 0 else math.ceil(math.sqrt(count))  # 32 -> 4 full rows of 8
    rows = math.ceil(count / ncol)
    fig = figure(11, 5.5 * rows / ncol + 0.7)  # each grid 5.5 in wide, its height follows its rows
    for ax, images, title in zip(fig.subplots(1, 2), (real, fake), ("real", "generated")):
        shown = images[:count].float().mean(1, keepdim=True)  # RGB-replicated gray back to gray
        show_gray(ax, grid(shown, nrow=ncol))
        ax.set_title(f"{title} ({len(shown)})")
    return finish(fig, path)


# ----------------------------------------------------------------------------------------------
# memorisation audit figures


def memorisation_pairs(fake: torch.Tensor, reference: torch.Tensor, nn_distance: np.ndarray,
                       nn_index: np.ndarray, threshold: float, n: int = 8,
                       path: str | Path | None = None) -> Figure:
    """The ``n`` generated images closest to a real one, each beside that real image.

    Panels read "generated | nearest real", titled with the distance; red titles are below the
    copy threshold. A copy looks like two identical halves.
    """
    order = np.argsort(nn_distance)[:n]
    ncol = min(4, max(1, len(order)))
    nrows = max(1, math.ceil(len(order) / ncol))
    fig = Figure(figsize=(3.2 * ncol, 1.9 * nrows + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncol)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, i in zip(axes, order):
        pair = torch.stack([fake[i].float().mean(0, keepdim=True), reference[nn_index[i]].float().mean(0, keepdim=True)])
        show_gray(ax, grid(pair, nrow=2))
        close = nn_distance[i] < threshold
        ax.set_title(f"gen {i} | real {nn_index[i]}: {nn_distance[i]:.3g}", fontsize=9,
                     color="red" if close else "black")
    fig.suptitle(f"closest generated | nearest real (red: below copy threshold {threshold:.3g})", fontsize=10)
    return finish(fig, path)


def nn_distance_histograms(spaces: dict[str, tuple[np.ndarray, np.ndarray, float]],
                           path: str | Path | None = None) -> Figure:
    """Per feature space: nearest-real distances of generated images against the real-to-real baseline.

    ``spaces`` maps a name to ``(generated NN distances, held-out-to-training NN distances, threshold)``.
    A generator that copies shows a generated mass left of the baseline and of the threshold line.
    """
    fig = Figure(figsize=(4.6 * len(spaces), 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(spaces)))
    for ax, (name, (fake_d, base_d, threshold)) in zip(axes, spaces.items()):
        bins = np.linspace(0, max(fake_d.max(), base_d.max()) * 1.02 + 1e-12, 40)
        ax.hist(base_d, bins=bins, density=True, alpha=0.55, label=f"held-out real -> training ({len(base_d)})")
        ax.hist(fake_d, bins=bins, density=True, alpha=0.55, label=f"generated -> real ({len(fake_d)})")
        ax.axvline(threshold, color="red", lw=1, ls="--", label="copy threshold")
        copy_rate = float(np.mean(fake_d < threshold))
        ax.set_title(f"{name}: copy rate {100 * copy_rate:.1f}%", fontsize=10)
        ax.set_xlabel("distance to nearest real image")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("density")
    return finish(fig, path)


# ----------------------------------------------------------------------------------------------
# where a classifier two-sample test finds its evidence


def evidence_overlay(ax, image: torch.Tensor, evidence: torch.Tensor | np.ndarray, scale: float):
    """Draw ``image`` (``C x H x W`` in [-1, 1], shown gray) under an ``h x w`` C2ST evidence map whose cell
    (r, c) covers pixels [8r, 8r + 8) x [8c, 8c + 8) (``c2st.evidence_map``), red positive, on a symmetric
    colour scale of +-``scale`` logits. Returns the map's image artist (for a colour bar)."""
    gray = to_uint8(image.float().mean(0, keepdim=True))[0].numpy()
    show_gray(ax, gray)
    m = np.asarray(evidence, dtype=np.float64)
    h, w = 8 * m.shape[0], 8 * m.shape[1]
    shown = ax.imshow(m, cmap="bwr", vmin=-scale, vmax=scale, alpha=0.45, interpolation="bilinear",
                      extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    ax.set_xlim(-0.5, gray.shape[1] - 0.5)
    ax.set_ylim(gray.shape[0] - 0.5, -0.5)
    return shown


def c2st_evidence(evidence: dict, n: int = 6, path: str | Path | None = None) -> Figure:
    """Where the C2ST classifier tells generated images from real ones (``c2st.c2st_evidence``'s result).

    Left column: the mean held-out test image of the real set, bare and under the mean evidence map
    (generated minus real). Other columns: the ``n`` generated test images the classifier is surest
    about, bare and under their own maps. Red cells push toward "generated", blue toward "real"; all
    maps share one symmetric colour scale in logits, and each cell covers 8 x 8 px (its receptive
    field is wider: see ``c2st.evidence_map``).
    """
    order = torch.argsort(evidence["scores_b"], descending=True)[:n].tolist()
    images = [evidence["test_a"].float().mean(0)] + [evidence["test_b"][i].float() for i in order]
    maps = [torch.as_tensor(evidence["difference"]).float()] + [evidence["maps_b"][i].float() for i in order]
    scale = max(float(m.abs().max()) for m in maps) or 1.0
    fig = figure(1.7 * len(images) + 0.8, 3.9)
    axes = np.atleast_2d(fig.subplots(2, len(images)))
    for k, (img, m) in enumerate(zip(images, maps)):
        show_gray(axes[0, k], to_uint8(img.mean(0, keepdim=True))[0].numpy())
        shown = evidence_overlay(axes[1, k], img, m, scale)
        axes[0, k].set_title("mean real (test)" if k == 0 else f"generated, logit {float(m.mean()):.1f}", fontsize=8)
    axes[1, 0].set_title("mean evidence, gen - real", fontsize=8)
    fig.colorbar(shown, ax=axes[:, -1], shrink=0.8, label="logit contribution")
    fig.suptitle(f"C2ST evidence (one seed, test AUC {evidence['auc']:.3f}): red = looks generated", fontsize=10)
    return finish(fig, path)
