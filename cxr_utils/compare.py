"""Head-to-head comparison of generator recipes on the same images and budget (notebook 03).

Every contender trains through the shared loop (``train.train``) on the same training images, in
segments: after each milestone of the image budget (in kimg) the run is resumed to the next one, and
the EMA generator is scored against held-out real images with ``evaluate.evaluate``. That gives the
metrics *over training* (the trend that says where a slower model would overtake), at an equal
image budget. For an equal wall-time comparison, contenders that reach the budget faster are then
trained on until their training time matches the slowest contender's (the kimg this needs is
the loop's ``time_budget_s``: training stops at the end of the first epoch past the slowest contender's
training time, so the times match to within one epoch; the achieved seconds are reported).

With ``seconds`` set, the equal wall-time budget is that many seconds of training for every contender
(the comparison of record uses 600 s: what a CPU user can give each recipe), the loop stops after the
iteration that reaches it.

Every row is scored on images the generator never trained on: FID/KID/precision/recall of each
extractor in ``extractors`` (offline radiograph statistics, and Inception-v3 by default) against the
held-out part with the real-vs-held-out baseline, MS-SSIM diversity, the copy rate, and the classifier
two-sample test (C2ST, Lopez-Paz & Oquab 2017) of held-out real vs generated with its floor (held-out
real vs training real, computed once per comparison). Contenders do not score checkpoints while they
train: every row is the EMA generator at that budget (the *final* checkpoint of that segment).

Rows (one per contender and milestone) are appended to ``rows.jsonl`` in the output folder as they are
measured; a re-run skips measured milestones and resumes the training runs, so an interrupted
comparison loses at most the segment in progress.

``python -m cxr_utils compare --out results/compare-phantom --source phantom:2000 --seconds 600 ...``
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from . import config as C
from . import evaluate, runs, train
from .errors import ConfigError
from .metrics import to_gray
from .paths import project_path
from .stats import seeded_subset

# name -> (train preset, overrides): the references, the stabilised DCGAN, StyleGAN2-ADA and its ablation,
# and FastGAN with each of its three discriminators. Every contender keeps its preset's channels (the
# DCGANs and StyleGAN2 3, replicated gray as in the references; FastGAN 1, as the main job trains it);
# every measure sees the gray image (the channel mean), so a colour tint is no give-away.
DEFAULT_CONTENDERS: dict[str, tuple[str, dict[str, Any]]] = {
    "DCGAN lungcancer-dcgan": ("lungcancer-dcgan", {}),
    "DCGAN stable": ("stable", {}),
    "StyleGAN2-ADA": ("stylegan2-cpu-small", {}),
    "StyleGAN2 no ADA": ("stylegan2-cpu-small", {"augment": "none"}),
    "FastGAN scratch": ("fastgan-cpu", {"d_arch": "scratch", "recon_weight": 1.0}),
    "FastGAN projected": ("fastgan-cpu", {"d_arch": "projected", "recon_weight": 0.0}),
    "FastGAN hybrid": ("fastgan-cpu", {"d_arch": "hybrid", "recon_weight": 1.0}),
    "FastGAN projected+detail": ("fastgan-cpu", {"d_arch": "projected", "recon_weight": 0.0, "detail_head": True}),
    "FastGAN projected bilinear": ("fastgan-cpu", {"d_arch": "projected", "recon_weight": 0.0,
                                                   "fastgan_upsample": "bilinear"}),
}
# What notebook 03 compares unless told otherwise (the FastGAN contenders are chosen by name).
STANDARD_CONTENDERS = ("DCGAN lungcancer-dcgan", "DCGAN stable", "StyleGAN2-ADA", "StyleGAN2 no ADA")

C2ST_STEPS = 150  # optimiser steps of each C2ST seed (evaluate's default too)
METRICS = ("fid", "fid_baseline", "kid", "swd", "precision", "recall", "msssim", "msssim_real",
           "copy_rate", "mode_collapse", "c2st_auc", "c2st_auc_ci95", "c2st_accuracy", "c2st_floor")


@dataclass
class CompareConfig:
    """What is compared, on which images, for how long."""

    source: str = C.option("phantom:2400", "data source (data.load); a held-out part is never trained on")
    image_size: int = C.option(64, "square image size")
    holdout_fraction: float = C.option(0.2, "share of the source kept apart as the real reference")
    kimg: float = C.option(4.0, "equal image budget per contender, thousands of real images shown")
    milestones: int = C.option(4, "evaluations over training, evenly spaced in kimg")
    equal_wall_time: bool = C.option(True, "also train faster contenders to the slowest one's wall time")
    seconds: float | None = C.option(None, "the equal wall-time budget in training seconds for every contender "
                                           "(None: the slowest contender's time at the image budget)")
    contenders: tuple[str, ...] = C.option(STANDARD_CONTENDERS, "names from DEFAULT_CONTENDERS (FastGAN scratch, "
                                                                "FastGAN projected, FastGAN hybrid too)")
    stylegan2_preset: str = C.option("stylegan2-cpu-small", "train preset of the StyleGAN2 contenders "
                                                            "(stylegan2-auto64 ... on a GPU)")
    n_eval: int = C.option(500, "generated images scored at each milestone (capped real sets too)")
    seed: int = C.option(0, "training and evaluation seed")
    extractors: tuple[str, ...] = C.option(("offline", "inception"), "feature extractors for FID/KID/PR "
                                                                      "(the first one ranks the verdict's FID)")
    c2st: bool = C.option(True, "classifier two-sample test, held-out real vs generated, with its floor")
    c2st_bands: bool = C.option(False, "also the C2ST on the coarse (4x4 block means) and detail (image minus "
                                       "its blur) bands, with their floors: what gives the samples away")
    train_overrides: dict[str, Any] = field(default_factory=dict)  # applied to every contender (e.g. base)

    def validate(self) -> None:
        unknown = [c for c in self.contenders if c not in DEFAULT_CONTENDERS]
        if unknown:
            raise ConfigError(f"unknown contender(s) {unknown}; choose from {', '.join(DEFAULT_CONTENDERS)}")
        if not self.stylegan2_preset.startswith("stylegan2-") or self.stylegan2_preset not in train.PRESETS:
            raise ConfigError(f"stylegan2_preset must be a StyleGAN2 train preset, got {self.stylegan2_preset!r}")
        if not self.contenders:
            raise ConfigError("contenders: give at least one")
        if self.kimg <= 0 or self.milestones < 1 or self.n_eval < 8:
            raise ConfigError("kimg must be > 0, milestones >= 1 and n_eval >= 8")
        if not 0 < self.holdout_fraction < 1:
            raise ConfigError("holdout_fraction must be in (0, 1)")
        if self.seconds is not None and not (math.isfinite(self.seconds) and self.seconds > 0):
            raise ConfigError(f"seconds must be > 0 (or None), got {self.seconds}")
        if not self.extractors:
            raise ConfigError("extractors: give at least one (offline, inception, xrv)")


def slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")


def split_images(images: torch.Tensor, holdout_fraction: float, seed: int = 0,
                 groups: Sequence[str] | np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) images, patient-disjoint; every contender trains on exactly ``train``.

    The split is ``splits.make_splits`` with one stratum, as ``evaluate`` holds out real images:
    ``groups`` (one patient id per image, e.g. ``CXRDataset.groups``) keeps every patient on one side,
    so the real-vs-held-out FID baseline and the copy audit never compare a patient with itself;
    ``None`` makes every image its own group. Both parts keep the images' order. Raises ConfigError
    when fewer than 16 images would be left to train on (or either part is empty).
    """
    from .errors import DataError
    from .splits import make_splits

    try:
        parts = make_splits(np.zeros(len(images), dtype=int), groups, (1 - holdout_fraction, holdout_fraction),
                            seed=seed, names=("train", "holdout"))
    except DataError as exc:
        raise ConfigError(f"{len(images)} images are too few to hold out {holdout_fraction:.0%}: {exc}") from None
    train_idx, hold_idx = parts["train"], parts["holdout"]
    if len(train_idx) < 16 or len(hold_idx) < 2:
        raise ConfigError(f"{len(images)} images leave too few to train on after holding out {len(hold_idx)} "
                          f"(need >= 16 to train and >= 2 held out)")
    return images[torch.from_numpy(train_idx)], images[torch.from_numpy(hold_idx)]


def with_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Gray radiographs (N x 1|3 x H x W, 3 = replicated gray) with ``channels`` channels: the channel
    mean for 1, the gray replicated for 3."""
    gray = to_gray(images)
    return gray if channels == 1 else gray.expand(-1, channels, -1, -1).contiguous()


def milestone_kimg(kimg: float, milestones: int, n_train: int, batch: int) -> list[float]:
    """Evaluation points in kimg at whole epochs (the loop trains whole epochs), evenly spread, no repeats.

    The last one is the budget rounded up to a whole epoch, as ``train`` rounds it."""
    per_epoch = (n_train // batch) * batch
    epochs = math.ceil(kimg * 1000 / per_epoch - 1e-9)
    points = sorted({max(1, round(epochs * (i + 1) / milestones)) for i in range(milestones)})
    return [e * per_epoch / 1000 for e in points]


def contender_preset(cfg: CompareConfig, name: str) -> str:
    """The train preset a contender uses (the StyleGAN2 ones follow ``cfg.stylegan2_preset``)."""
    preset = DEFAULT_CONTENDERS[name][0]
    return cfg.stylegan2_preset if preset.startswith("stylegan2-") else preset


def contender_config(cfg: CompareConfig, name: str, kimg: float, n_train: int) -> train.TrainConfig:
    """The contender's preset at this comparison's size, seed and budget. A preset batch larger than half
    the training set (the DCGAN references' 128 on a 100-image set) is cut to the largest power of two
    that fits twice; the row records the batch used."""
    overrides = DEFAULT_CONTENDERS[name][1]
    # no checkpoint scoring while contenders train: every row scores the generator at its budget
    tcfg = train.make_config(contender_preset(cfg, name), **{"image_size": cfg.image_size, "seed": cfg.seed,
                                                             "score_every_kimg": 0.0, **overrides,
                                                             **cfg.train_overrides, "kimg": kimg})
    if tcfg.batch_size > n_train // 2:
        tcfg = C.apply_overrides(tcfg, batch_size=2 ** int(math.log2(max(n_train // 2, 1))))
    return tcfg


def _summary(m: Mapping[str, Any], extractors: Sequence[str]) -> dict[str, Any]:
    """The comparison's columns out of an ``evaluate.evaluate`` result: the first extractor's figures
    unprefixed (``fid``, ``kid``, ...), every further one's prefixed by its name (``inception_fid``, ...)."""
    first = extractors[0]
    mem = m["memorisation"].get(first, m["memorisation"]["pixel"])
    out = {"swd": m["swd"]["mean"], "msssim": m["diversity"]["generated"], "msssim_real": m["diversity"]["real"],
           "msssim_gap_ci95": m["diversity"]["difference_ci95"],
           "copy_rate": mem["copy_rate"], "mode_collapse": bool(m["diversity"]["mode_collapse"])}
    for ext in extractors:
        fid, kid, pr = m["fid"][ext], m["kid"][ext], m["precision_recall"][ext]
        prefix = "" if ext == first else f"{ext}_"
        out |= {f"{prefix}fid": fid.get("value"), f"{prefix}fid_baseline": fid.get("real_baseline"),
                f"{prefix}kid": kid.get("value"), f"{prefix}precision": pr.get("precision"),
                f"{prefix}recall": pr.get("recall")}
    return out


def _c2st_columns(test: Mapping[str, Any], floor: Mapping[str, Any]) -> dict[str, Any]:
    """C2ST columns of a row: AUC (mean, median, 95% interval), accuracy at the validation threshold, and
    the floor (the same test between held-out and training real images)."""
    return {"c2st_auc": test["auc"], "c2st_auc_median": test["auc_median"], "c2st_auc_ci95": test["auc_ci95"],
            "c2st_accuracy": test["accuracy"], "c2st_accuracy_ci95": test["accuracy_ci95"],
            "c2st_seeds": test["n_seeds"], "c2st_n": test["n_per_set"],
            "c2st_floor": floor["auc"], "c2st_floor_ci95": floor["auc_ci95"],
            "c2st_floor_accuracy": floor["accuracy"]}


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line after a crash
            break
    return rows


@dataclass
class Comparison:
    """Everything measured: one row per (contender, milestone), plus the images it was measured on."""

    config: CompareConfig
    rows: list[dict[str, Any]]
    out_dir: Path
    train_images: torch.Tensor
    holdout_images: torch.Tensor

    def table(self):
        import pandas as pd

        return pd.DataFrame(self.rows)

    def final(self, budget: str = "image") -> dict[str, dict[str, Any]]:
        """Per contender, the row at the equal image budget (``"image"``) or at equal wall time (``"wall"``)."""
        picked: dict[str, dict[str, Any]] = {}
        for r in self.rows:  # the last image-budget milestone (fewer than asked when epochs are few)
            if r["budget"] == "image" and r["milestone"] >= picked.get(r["contender"], {}).get("milestone", 0):
                picked[r["contender"]] = r
        if budget == "wall":
            for r in self.rows:
                if r["budget"] == "wall":
                    picked[r["contender"]] = r
        return picked

    def generator(self, name: str) -> torch.nn.Module:
        return runs.load_run(self.out_dir / slug(name))[1]


@C.typed_keywords
def run(cfg: CompareConfig, out_dir: str | Path, images: torch.Tensor | None = None,
        progress: bool = True, groups: Sequence[str] | None = None) -> Comparison:
    """Train and score every contender (see the module docstring); resumable.

    ``images`` (N x C x H x W in [-1, 1]) replace loading ``cfg.source``; ``groups`` are their patient
    ids (None: one per image). Everything that can fail is checked before the first contender trains:
    the settings, the output folder (writable, holding no comparison with other settings), the
    held-out split and every contender's training config (ConfigError, one line).
    """
    cfg.validate()
    out = project_path(out_dir)
    saved = out / "compare_options.json"
    current = C.to_dict(cfg)
    if saved.exists():  # fields added since a folder was written count as their defaults
        C.check_same_settings({**C.to_dict(CompareConfig()), **json.loads(saved.read_text())}, current,
                              set(), "a comparison", out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        C.save_json(cfg, saved)
    except OSError as exc:
        raise ConfigError(f"output folder {out} is not writable: {exc.strerror or type(exc).__name__}") from None
    if images is None:
        from .data import load

        ds = load(cfg.source, image_size=cfg.image_size, channels=3, progress=progress)
        images, groups = ds.images, ds.groups
    real_train, real_hold = split_images(images.float(), cfg.holdout_fraction, cfg.seed, groups)
    gray_hold = to_gray(real_hold)
    for name in cfg.contenders:  # a bad preset override fails here, not after hours of the first contender
        contender_config(cfg, name, cfg.kimg, len(real_train))
    # the reference set keeps the seeded draw order (torch.randperm), as before the helper existed
    ref_train = real_train[torch.from_numpy(seeded_subset(len(real_train), cfg.n_eval, cfg.seed, sort=False))]
    rows_path = out / "rows.jsonl"
    rows = _read_rows(rows_path)
    done = {(r["contender"], r["budget"], r["milestone"]) for r in rows}
    floor: dict[str, Any] = {}  # the C2ST floor, computed at the first row that needs it

    def held_out_c2st(other: torch.Tensor) -> dict[str, Any]:
        from .c2st import c2st

        return c2st(gray_hold, to_gray(other), seed=cfg.seed, max_per_set=len(real_hold), steps=C2ST_STEPS)

    def c2st_floor() -> dict[str, Any]:
        if not floor:
            floor.update(held_out_c2st(ref_train))
        return floor

    band_floors: dict[str, dict[str, Any]] = {}

    def band_columns(fake: torch.Tensor) -> dict[str, Any]:
        from .c2st import c2st_bands

        opts = dict(seed=cfg.seed, max_per_set=len(real_hold), steps=C2ST_STEPS, bands=("coarse", "detail"))
        if not band_floors:
            band_floors.update(c2st_bands(gray_hold, to_gray(ref_train), **opts))
        cols: dict[str, Any] = {}
        for name, test in c2st_bands(gray_hold, to_gray(fake), **opts).items():
            cols |= {f"c2st_{name}_auc": test["auc"], f"c2st_{name}_auc_ci95": test["auc_ci95"],
                     f"c2st_{name}_floor": band_floors[name]["auc"]}
        return cols

    def measure(name: str, budget: str, milestone: int, kimg: float, seconds: float | None = None) -> None:
        if (name, budget, milestone) in done:
            return
        run_dir = out / slug(name)
        tcfg = contender_config(cfg, name, kimg, len(real_train))
        if seconds is not None:
            tcfg = C.apply_overrides(tcfg, time_budget_s=seconds)
        resume = (run_dir / runs.STATE).exists()
        result = train.train(tcfg, run_dir, images=with_channels(real_train, tcfg.channels),
                             resume=resume, overwrite=not resume,
                             progress=progress)
        fake = runs.sample(result.G, cfg.n_eval, seed=cfg.seed + 1)
        m = evaluate.evaluate(ref_train, real_hold, fake, extractors=cfg.extractors, seed=cfg.seed,
                              progress=False, kid_subset_size=min(1000, len(real_hold), cfg.n_eval), c2st=False)
        row = {"contender": name, "preset": contender_preset(cfg, name), "budget": budget,
               "milestone": milestone, "kimg": round(result.kimg, 3), "batch": tcfg.batch_size,
               "train_s": round(result.seconds, 1),
               "img_per_s": round(result.kimg * 1000 / max(result.seconds, 1e-9), 1),
               **_summary(m, cfg.extractors)}
        if cfg.c2st and min(len(real_hold), len(fake)) < 10:
            row["c2st_skipped"] = f"C2ST needs >= 10 held-out and generated images, got {len(real_hold)}, {len(fake)}"
        elif cfg.c2st:  # against held-out images: a generator that copies its training set does not pass
            from .c2st import c2st_evidence

            row |= _c2st_columns(held_out_c2st(fake.float()), c2st_floor())
            evidence = c2st_evidence(gray_hold, to_gray(fake.float()), seed=cfg.seed, steps=C2ST_STEPS,
                                     max_per_set=len(real_hold))
            row["c2st_evidence_map"] = np.round(evidence["difference"], 3).tolist()
            if cfg.c2st_bands:
                row |= band_columns(fake.float())
        if result.history and result.history[-1].get("augment_p") is not None:
            row["augment_p"] = result.history[-1]["augment_p"]
        rows.append(row)
        with open(rows_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    for name in cfg.contenders:
        batch = contender_config(cfg, name, cfg.kimg, len(real_train)).batch_size
        for i, kimg in enumerate(milestone_kimg(cfg.kimg, cfg.milestones, len(real_train), batch), start=1):
            measure(name, "image", i, kimg)
    if cfg.equal_wall_time and (len(cfg.contenders) > 1 or cfg.seconds is not None):
        final = Comparison(cfg, rows, out, real_train, real_hold).final("image")
        wall = cfg.seconds or max(r["train_s"] for r in final.values())
        # a fixed budget is met to within a step; "the slowest one's" to within 20 %, as it was set
        close = 0.98 if cfg.seconds else 0.8
        for name in cfg.contenders:
            r = final[name]
            if r["train_s"] < close * wall:  # otherwise already an equal-time point
                # kimg is only a ceiling here (3x what the measured speed predicts); time stops it
                measure(name, "wall", r["milestone"] + 1, 3 * wall * r["img_per_s"] / 1000, seconds=wall)
    return Comparison(cfg, rows, out, real_train, real_hold)


# ---------------------------------------------------------------------------------------------- verdict


def _trend(rows: list[dict[str, Any]], name: str, key: str = "fid") -> float:
    """Change of ``key`` per kimg over the last two image-budget milestones (NaN with fewer)."""
    pts = sorted((r["kimg"], r[key]) for r in rows if r["contender"] == name and r["budget"] == "image"
                 and r[key] is not None)
    if len(pts) < 2:
        return float("nan")
    (k0, v0), (k1, v1) = pts[-2], pts[-1]
    return (v1 - v0) / (k1 - k0) if k1 > k0 else float("nan")


def _model(name: str) -> str:
    """The model family of contender ``name``."""
    preset, overrides = DEFAULT_CONTENDERS[name]
    return overrides.get("model", train.PRESETS[preset]["model"])


def separated(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether row ``a``'s C2ST AUC is below row ``b``'s with non-overlapping 95% intervals."""
    return a.get("c2st_auc_ci95") is not None and b.get("c2st_auc_ci95") is not None \
        and a["c2st_auc_ci95"][1] < b["c2st_auc_ci95"][0]


def _c2st_lines(final: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The C2ST ranking (lower AUC = harder to tell from held-out real) and who beats `stable` outright."""
    scored = sorted(((n, r) for n, r in final.items() if r.get("c2st_auc") is not None),
                    key=lambda kv: kv[1]["c2st_auc"])
    if not scored:
        return []
    floor = scored[0][1]
    lines = [f"  C2ST AUC vs held-out real (0.5 = indistinguishable; floor real vs real {floor['c2st_floor']:.3f} "
             f"[{floor['c2st_floor_ci95'][0]:.3f}, {floor['c2st_floor_ci95'][1]:.3f}]): "
             + "; ".join(f"{n} {r['c2st_auc']:.3f} [{r['c2st_auc_ci95'][0]:.3f}, {r['c2st_auc_ci95'][1]:.3f}]"
                         for n, r in scored) + "."]
    ref = final.get("DCGAN stable")
    if ref is not None and ref.get("c2st_auc") is not None:
        winners = [n for n, r in scored if n != "DCGAN stable" and separated(r, ref)]
        lines.append("  Below DCGAN stable's C2ST AUC with non-overlapping intervals: "
                     + (", ".join(winners) if winners else "none") + ".")
    banded = [(n, r) for n, r in scored if r.get("c2st_coarse_auc") is not None]
    if banded:
        f = banded[0][1]
        lines.append(f"  C2ST per band, coarse (layout) / detail (texture) (floors {f['c2st_coarse_floor']:.3f} / "
                     f"{f['c2st_detail_floor']:.3f}): "
                     + "; ".join(f"{n} {r['c2st_coarse_auc']:.3f} / {r['c2st_detail_auc']:.3f}" for n, r in banded)
                     + ". The band further above its floor is what gives the samples away.")
    return lines


def verdict(comp: Comparison) -> str:
    """Plain-language conclusions computed from the measured rows (nothing here is written in advance)."""
    lines = []
    for budget, label in (("image", "equal image budget"), ("wall", "equal wall time")):
        final = comp.final(budget)
        if budget == "wall" and not any(r["budget"] == "wall" for r in comp.rows):
            continue
        if not final:
            continue
        ranked = sorted(final.items(), key=lambda kv: kv[1]["fid"])
        best, rb = ranked[0]
        parts = [f"{n} {r['fid']:.2f} at {r['kimg']:.1f} kimg, {r['train_s']:.0f} s" for n, r in ranked]
        lines.append(f"At {label}, offline FID (lower is better; real-vs-held-out baseline "
                     f"{rb['fid_baseline']:.2f}): " + "; ".join(parts) + f". Best: {best}.")
        collapsed = [n for n, r in final.items() if r["mode_collapse"]]
        if collapsed:
            lines.append(f"  Mode collapse flagged (MS-SSIM above real + margin) for: {', '.join(collapsed)}.")
        gaps = sorted(((n, r) for n, r in final.items() if r.get("msssim_gap_ci95") is not None),
                      key=lambda kv: abs(kv[1]["msssim"] - kv[1]["msssim_real"]))
        if gaps:
            lines.append("  MS-SSIM diversity, generated minus real [95% interval] (0: the real variety; above 0: "
                         "less varied), closest first: " + "; ".join(
                             f"{n} {r['msssim'] - r['msssim_real']:+.3f} [{r['msssim_gap_ci95'][0]:+.3f}, "
                             f"{r['msssim_gap_ci95'][1]:+.3f}]" for n, r in gaps) + ".")
        copying = [f"{n} ({r['copy_rate']:.1%})" for n, r in final.items() if r["copy_rate"] > 0.05]
        if copying:
            lines.append(f"  Copy rate above 5 % (near-duplicates of training images): {', '.join(copying)}.")
        lines += _c2st_lines(final)
        if any(r.get("inception_fid") is not None for r in final.values()):
            inc = sorted(((n, r) for n, r in final.items() if r.get("inception_fid") is not None),
                         key=lambda kv: kv[1]["inception_fid"])
            lines.append(f"  Inception FID (baseline {inc[0][1]['inception_fid_baseline']:.2f}): "
                         + "; ".join(f"{n} {r['inception_fid']:.1f}" for n, r in inc) + ".")
        pr = max(final.items(), key=lambda kv: (kv[1]["precision"] or 0) + (kv[1]["recall"] or 0))
        if (pr[1]["precision"] or 0) + (pr[1]["recall"] or 0) > 0:
            lines.append(f"  Highest precision + recall: {pr[0]} (precision {pr[1]['precision']:.2f}, "
                         f"recall {pr[1]['recall']:.2f}).")
        else:
            lines.append("  No contender has a sample inside the real images' manifold (precision and recall 0).")
    image = comp.final("image")
    ada, no_ada = image.get("StyleGAN2-ADA"), image.get("StyleGAN2 no ADA")
    if ada and no_ada:
        better = "helped" if ada["fid"] < no_ada["fid"] else "did not help"
        lines.append(f"ADA {better} StyleGAN2 at {ada['kimg']:.1f} kimg: FID {ada['fid']:.2f} with ADA "
                     f"(final p = {ada.get('augment_p', float('nan')):.3f}) vs {no_ada['fid']:.2f} without.")
    fg = sorted((n for n in image if _model(n) == "fastgan"), key=lambda n: image[n]["fid"])
    if len(fg) > 1:
        lines.append("FastGAN discriminators at the equal image budget, best first: "
                     + "; ".join(f"{n} FID {image[n]['fid']:.2f}" for n in fg) + ".")
    sg2 = [n for n in image if _model(n) == "stylegan2"]
    dc = [n for n in image if _model(n) == "dcgan"]
    if sg2 and dc:
        s = min(sg2, key=lambda n: image[n]["fid"])
        d = min(dc, key=lambda n: image[n]["fid"])
        gap = image[s]["fid"] - image[d]["fid"]
        slope_s, slope_d = _trend(comp.rows, s), _trend(comp.rows, d)
        if gap <= 0:
            lines.append(f"{s} beats the best DCGAN ({d}) by {-gap:.2f} FID at the equal image budget.")
        elif not (math.isfinite(slope_s) and math.isfinite(slope_d)):
            lines.append(f"{s} trails the best DCGAN ({d}) by {gap:.2f} FID at the equal image budget (one "
                         f"milestone each: no trend to extrapolate).")
        else:
            msg = (f"{s} trails the best DCGAN ({d}) by {gap:.2f} FID at the equal image budget; over the "
                   f"last milestones its FID changed by {slope_s:+.2f} per kimg, the DCGAN's by {slope_d:+.2f}.")
            closing = slope_d - slope_s
            if math.isfinite(closing) and closing > 0:
                msg += (f" If both trends held (a linear extrapolation, not a promise), the gap would close "
                        f"after about {gap / closing:.1f} more kimg.")
            else:
                msg += " At these trends the gap is not closing."
            lines.append(msg)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- figures


def plot_metrics(comp: Comparison, x: str = "kimg", path: str | Path | None = None):
    """Metrics over training (``x`` = "kimg" or "train_s"), one line per contender; dashed = real baseline."""
    from .plots import figure, finish

    panels = [("fid", f"{comp.config.extractors[0]} FID (lower better)"), ("precision", "precision"),
              ("recall", "recall"), ("msssim", "MS-SSIM diversity (lower = more diverse)"),
              ("copy_rate", "copy rate")]
    if any(r.get("inception_fid") is not None for r in comp.rows):
        panels.insert(1, ("inception_fid", "Inception FID (lower better)"))
    if any(r.get("c2st_auc") is not None for r in comp.rows):
        panels.insert(0, ("c2st_auc", "C2ST AUC vs held-out (0.5 = real)"))
    fig = figure(4.2 * len(panels), 3.8)
    axes = fig.subplots(1, len(panels))
    for name in comp.config.contenders:
        pts = sorted((r[x], r) for r in comp.rows if r["contender"] == name)
        if not pts:
            continue
        xs = [p[0] for p in pts]
        for ax, (key, _) in zip(axes, panels):
            ax.plot(xs, [p[1].get(key) if p[1].get(key) is not None else np.nan for p in pts], marker="o",
                    label=name)
    real = [r for r in comp.rows if r["fid_baseline"] is not None]
    if real:
        baselines = {"fid": "fid_baseline", "inception_fid": "inception_fid_baseline", "msssim": "msssim_real",
                     "c2st_auc": "c2st_floor"}
        for ax, (key, _) in zip(axes, panels):
            values = [r[baselines[key]] for r in real if key in baselines and r.get(baselines[key]) is not None]
            if values:
                ax.axhline(float(np.median(values)), color="k", ls="--", lw=0.8, label="real")
    for ax, (key, title) in zip(axes, panels):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("kimg (real images shown / 1000)" if x == "kimg" else "training time (s)")
        if x == "train_s":
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on a short log axis
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8)
    return finish(fig, path)


def plot_samples(comp: Comparison, n: int = 16, path: str | Path | None = None):
    """Real training images, then each contender's final samples, as grids side by side."""
    from .images import grid
    from .plots import figure, finish, show_gray

    panels = [("real (training)", comp.train_images[:n])]
    for name in comp.config.contenders:
        if (comp.out_dir / slug(name) / runs.NETWORK_FINAL).exists():
            panels.append((name, runs.sample(comp.generator(name), n, seed=comp.config.seed + 2)))
    fig = figure(3.6 * len(panels), 3.9)
    for ax, (title, imgs) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        show_gray(ax, grid(imgs, nrow=int(math.sqrt(n)), gray=True))
        ax.set_title(title, fontsize=10)
    return finish(fig, path)


def plot_evidence(comp: Comparison, budget: str = "image", path: str | Path | None = None):
    """Where the C2ST tells each contender's samples from held-out real images (``c2st.c2st_evidence``).

    One panel per contender at ``budget`` ("image" or "wall"): the mean held-out image under the mean
    evidence map of its first C2ST seed's classifier (generated minus real test images, logits, red =
    looks generated), all on one colour scale. Rows without a map (C2ST off, or written before maps
    existed) get a panel saying so.
    """
    from .plots import evidence_overlay, figure, finish

    final = comp.final(budget)
    names = [n for n in comp.config.contenders if n in final] or ["(no rows)"]
    maps = {n: np.asarray(final[n]["c2st_evidence_map"]) for n in names if final.get(n, {}).get("c2st_evidence_map")}
    scale = max((float(np.abs(m).max()) for m in maps.values()), default=1.0) or 1.0
    mean_real = comp.holdout_images.float().mean(0) if len(comp.holdout_images) else None
    fig = figure(2.6 * len(names) + 0.8, 3.0)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    shown = None
    for ax, name in zip(axes, names):
        if name in maps and mean_real is not None:
            shown = evidence_overlay(ax, mean_real, maps[name], scale)
            ax.set_title(f"{name}\nC2ST AUC {final[name]['c2st_auc']:.3f}", fontsize=8)
        else:
            ax.set_axis_off()
            ax.text(0.5, 0.5, f"{name}:\nno C2ST evidence\nin this row", ha="center", va="center", fontsize=8)
    if shown is not None:
        fig.colorbar(shown, ax=list(axes), shrink=0.8, label="logit contribution")
    fig.suptitle(f"C2ST evidence at the {budget} budget over the mean held-out image: red = looks generated",
                 fontsize=9)
    return finish(fig, path)


def make_config(**overrides: Any) -> CompareConfig:
    """CompareConfig defaults plus overrides, type-checked through ``config.coerce``.

    Papermill strings are read as the CLI reads them: ``equal_wall_time="false"`` is False,
    ``contenders="['DCGAN stable']"`` a list, ``train_overrides="{'base': 8}"`` a dict; an unknown name or
    an ill-typed value is a one-line ConfigError.
    """
    return C.apply_overrides(CompareConfig(), overrides)


TABLE_COLUMNS = ("contender", "budget", "kimg", "train_s", "img_per_s", "c2st_auc", "c2st_auc_ci95",
                 "c2st_accuracy", "c2st_floor", "c2st_coarse_auc", "c2st_detail_auc", "inception_fid",
                 "inception_fid_baseline", "inception_kid",
                 "fid", "fid_baseline", "precision", "recall", "inception_precision", "inception_recall",
                 "msssim", "msssim_real", "msssim_gap_ci95", "copy_rate")


def format_table(comp: Comparison, columns: Sequence[str] = TABLE_COLUMNS) -> str:
    """The rows as a Markdown table (what benchmarks/README.md quotes); columns no row has are left out."""
    columns = [c for c in columns if any(r.get(c) is not None for r in comp.rows)]
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns)
    body = []
    for r in comp.rows:
        cells = []
        for c in columns:
            v = r.get(c)
            if isinstance(v, list):
                cells.append("[" + ", ".join(f"{x:.3f}" for x in v) + "]")
            else:
                cells.append(f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v)))
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, *body])


# ---------------------------------------------------------------------------------------------- CLI


def cli_add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="comparison folder (resumable: rows.jsonl, one run per contender)")
    C.add_arguments(parser, CompareConfig, skip=("train_overrides",))
    parser.add_argument("--train-overrides", default=None, metavar="DICT",
                        help="train config fields applied to every contender, e.g. \"{'precision': 'fp32'}\"")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (one line per epoch)")


def cli_run(args: argparse.Namespace) -> int:
    overrides = C.overrides_from_args(args, CompareConfig)
    if args.train_overrides is not None:
        overrides["train_overrides"] = args.train_overrides
    cfg = make_config(**overrides)
    comp = run(cfg, args.out, progress=not args.no_progress)
    print(format_table(comp))
    text = verdict(comp)
    (comp.out_dir / "verdict.txt").write_text(text + "\n")
    print(text)
    plot_samples(comp, path=comp.out_dir / "samples.png")
    plot_metrics(comp, x="kimg", path=comp.out_dir / "metrics_vs_kimg.png")
    if cfg.c2st:
        budget = "wall" if any(r["budget"] == "wall" for r in comp.rows) else "image"
        plot_evidence(comp, budget=budget, path=comp.out_dir / "c2st_evidence.png")
    return 0
