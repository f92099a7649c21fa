"""The synthetic-augmentation study: do GAN-made radiographs help a classifier?

The answer must be trustworthy either way, so the design is a paired comparison on fixed test sets:

- per seed, one leak-free split (``splits.make_splits``, grouped by patient, stratified); for each
  real-data fraction ``f`` the training set is the stratified ``f``-subset of the training split
  (nested across fractions); validation and test are the full validation and test splits;
- conditions: ``real`` (no augmentation), ``real+classic`` (flips/affine/intensity jitter: the control
  any GAN must beat), ``real+<gan>x<ratio>`` (real images plus ``ratio x n_real`` synthetic images of
  each augmented class, from one generator per class trained on that class's training images of the
  ``f``-subset only) and ``synthetic-only:<gan>`` (as many synthetic images per class as real ones);
- every classifier is scored on the same test images as ``real`` of its seed, so the AUC difference
  has a paired bootstrap interval (``stats.paired_bootstrap_delta``); seeds are pooled by resampling
  each seed's test set and averaging the per-seed differences;
- no test image's MD5 may be in any generator's training set (``splits.assert_no_leak``), checked
  against the MD5 list stored next to each cached generator, so a stale cache cannot leak either.

Generators: ``generators`` names any preset of ``train.PRESETS`` -- a DCGAN (``lungcancer-dcgan``,
``stable``, ...) or a StyleGAN2-ADA one (``stylegan2-cpu-small``, ``stylegan2-auto64``, ...); each is
trained by the shared loop ``train.train``. Every generator of a study gets the same budget:
``gan_epochs`` epochs over its class's images, or ``gan_kimg`` thousand images shown when that is set
(a preset's own ``kimg``, as StyleGAN2 presets carry, is always replaced by the study's budget).
``gan_batch_size`` applies to every preset (``None``: the preset's own batch size, e.g. 16 for
``stylegan2-cpu-small``); ``gan_base`` is the DCGAN width only (StyleGAN2 widths come from the preset).

Two choices to keep in mind when reading results:

- **Equal epochs, not equal optimisation steps** (the default, ``clf_budget="epochs"``): every
  classifier trains for up to ``clf_epochs`` epochs over *its own* training set (with early stopping
  on validation AUC), so a condition with more training images also takes more gradient steps --
  with every class augmented, ``real+<gan>x1`` takes twice as many steps as ``real`` at the same
  fraction, ``x2`` three times as many. With too few epochs, the extra steps alone can look like a
  gain from the synthetic images (on the phantom, a +0.029 AUC at 25 % of the data under equal epochs
  became -0.078 under equal steps; benchmarks/README.md).
  ``clf_budget="steps"`` instead scales each cell's epochs by ``n_real / n_train`` (rounded to whole
  epochs, at least 1), so every condition of a fraction takes about as many optimiser steps as
  real-only; each cell records ``epochs_max``, ``epochs_run`` and ``optimizer_steps``.
- Classic augmentation is used only in the ``real+classic`` condition, so each GAN condition is
  compared with the control, not stacked on it.

Everything is resumable: each (condition, fraction, seed) cell is one ``cells/<name>.json`` written
atomically, and generators are ordinary ``train`` run folders under ``generators/``.

``python -m cxr_utils study --source phantom:2000 --out results/study [--backbone smallcnn] [--FIELD V]``
(on a CPU shared with other jobs, prefix ``OMP_NUM_THREADS=1``: two threads per process on two busy
cores made the classifier ~7x slower; benchmarks/README.md has a timed phantom run).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from . import classify, runs, splits, stats
from . import config as C
from .errors import ConfigError, DataError, RunError
from .paths import project_path

REAL, CLASSIC = "real", "real+classic"
CELLS, GENERATORS = "cells", "generators"
# fields that only widen or re-read the grid; any other change would make old cells incomparable
EXTENDING_FIELDS = frozenset({"fractions", "ratios", "seeds", "generators", "n_boot", "out", "device"})


@dataclass
class StudyConfig:
    """The whole study grid and the settings of every model trained in it."""

    source: str = C.option("phantom:2000", "data source for data.load (folder, medmnist:<flag>, phantom:N)")
    image_size: int = C.option(64, "image side (a power of two >= 16, the GANs need it)")
    backbone: classify.Backbone = C.option("resnet50", "classifier: resnet50, resnet18 or smallcnn")
    pretrained: bool = C.option(False, "start the classifier from local ImageNet weights (never downloaded)")
    fractions: tuple[float, ...] = C.option((0.1, 0.25, 1.0), "fractions of the real training split")
    ratios: tuple[float, ...] = C.option((0.5, 1.0, 2.0), "synthetic:real ratios per augmented class")
    seeds: tuple[int, ...] = C.option((0, 1, 2), "seeds: split, subset, GAN and classifier (at least 3)")
    generators: tuple[str, ...] = C.option(("lungcancer-dcgan", "stable"), "train presets, one GAN per class")
    augment_classes: tuple[str, ...] | None = C.option(None, "classes that get synthetic images (None: all)")
    synthetic_only: bool = C.option(True, "also train on synthetic images only")
    gan_epochs: int = C.option(25, "GAN training epochs (the budget of every generator preset)")
    gan_kimg: float | None = C.option(None, "GAN budget in thousands of images shown; replaces gan_epochs "
                                            "(None: gan_epochs, also for presets with their own kimg)")
    gan_batch_size: int | None = C.option(64, "GAN batch size, capped at the class size (None: the preset's)")
    gan_base: int = C.option(64, "DCGAN width (StyleGAN2 presets bring their own widths)")
    clf_epochs: int = C.option(20, "classifier maximum epochs")
    clf_budget: Literal["epochs", "steps"] = C.option(
        "epochs", "epochs: every condition trains clf_epochs epochs, so more images = more steps; "
                  "steps: epochs scaled by n_real/n_train, about as many steps as real-only")
    clf_batch_size: int = C.option(32, "classifier batch size")
    clf_patience: int = C.option(5, "classifier early-stopping patience (0: none)")
    clf_lr: float = C.option(1e-3, "classifier learning rate")
    split: tuple[float, ...] = C.option((0.7, 0.15, 0.15), "train/val/test fractions")
    n_boot: int = C.option(1000, "bootstrap resamples for every interval")
    device: str = C.option("auto", "auto | cpu | cuda[:i]")
    out: str = C.option("results/study", "study folder")

    def validate(self) -> None:
        rules = [
            (len(self.seeds) >= 3 and len(set(self.seeds)) == len(self.seeds),
             f"need at least 3 distinct seeds for a seed-level comparison, got {list(self.seeds)}"),
            (len(self.fractions) >= 1 and all(0 < f <= 1 for f in self.fractions),
             "fractions must be in (0, 1]"),
            (all(r > 0 for r in self.ratios), "ratios must be > 0"),
            (self.image_size >= 16 and self.image_size & (self.image_size - 1) == 0,
             "image_size must be a power of two >= 16"),
            (min(self.gan_epochs, self.gan_batch_size or 1, self.gan_base, self.clf_epochs,
                 self.clf_batch_size) >= 1, "epochs, batch sizes and gan_base must be >= 1"),
            (self.gan_kimg is None or self.gan_kimg > 0, "gan_kimg must be > 0 (or None)"),
            (self.n_boot >= 100, "n_boot must be >= 100 for a 95% interval"),
        ]
        for ok, message in rules:
            if not ok:
                raise ConfigError(message)
        from .train import PRESETS

        unknown = [g for g in self.generators if g not in PRESETS]
        if unknown:
            raise ConfigError(f"unknown generator preset(s) {unknown}; choose from {', '.join(PRESETS)}")


def make_study_config(**overrides: Any) -> StudyConfig:
    """Defaults plus overrides (Python values, papermill parameters or CLI strings), validated.

    Every value goes through ``config.coerce``: ``"false"`` is False, ``"[0.1, 1.0]"`` a list; an unknown
    name or an ill-typed value is a one-line ConfigError.
    """
    return C.apply_overrides(StudyConfig(), overrides)


# ------------------------------------------------------------------------------------------ grid


@dataclass(frozen=True)
class Cell:
    """One classifier training: a condition at one real-data fraction and seed."""

    condition: str
    kind: Literal["real", "classic", "mixed", "synthetic"]
    fraction: float
    seed: int
    generator: str | None = None
    ratio: float | None = None

    @property
    def name(self) -> str:
        return f"{self.condition.replace(':', '-')}__f{self.fraction:g}__s{self.seed}"


def conditions(cfg: StudyConfig) -> list[tuple[str, str, str | None, float | None]]:
    """(condition, kind, generator, ratio) in plotting order."""
    out: list[tuple[str, str, str | None, float | None]] = [(REAL, "real", None, None),
                                                             (CLASSIC, "classic", None, None)]
    for gan in cfg.generators:
        out += [(f"real+{gan}x{r:g}", "mixed", gan, r) for r in cfg.ratios]
        if cfg.synthetic_only:
            out.append((f"synthetic-only:{gan}", "synthetic", gan, None))
    return out


def grid(cfg: StudyConfig) -> list[Cell]:
    """Every cell, seed-major so an interrupted study has whole seeds done first."""
    return [Cell(c, k, float(f), int(s), g, r)
            for s in cfg.seeds for f in cfg.fractions for c, k, g, r in conditions(cfg)]


# ------------------------------------------------------------------------------------------- I/O


def write_json_atomic(obj: Any, path: Path) -> None:
    """JSON through :func:`paths.atomic_write`: a crash never leaves a partial cell file."""
    from .paths import atomic_write

    atomic_write(path, lambda f: json.dump(obj, f), binary=False)


def _check_out_dir(cfg: StudyConfig, out: Path, write: bool = True) -> None:
    """Refuse to mix cells trained under different settings in one folder, or an unwritable folder."""
    saved_path = out / "study_config.json"
    given = C.to_dict(cfg)
    if saved_path.exists():
        # a field added after the folder was written counts as its default (what those cells used)
        saved = C.to_dict(StudyConfig()) | json.loads(saved_path.read_text())
        C.check_same_settings(saved, given, EXTENDING_FIELDS, "a study", out)
    _check_writable(out)
    if write:
        write_json_atomic(given, saved_path)


def _check_writable(out: Path) -> None:
    """ConfigError naming ``out`` when it cannot be created or written to (before any training)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"output folder {out} is not writable: {exc.strerror or type(exc).__name__}") from None


# ------------------------------------------------------------------------------------------ data


@dataclass
class _Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


class _Study:
    """The loaded data and the per-seed splits, plus the cached generators of one run."""

    def __init__(self, cfg: StudyConfig, out: Path, progress: bool):
        from .data import load

        self.cfg, self.out, self.progress = cfg, out, progress
        self.ds = load(cfg.source, image_size=cfg.image_size, channels=1, progress=progress)
        self.y = self.ds.labels.numpy()
        self.k = len(self.ds.class_names)
        if self.k < 2:
            raise DataError(f"{cfg.source} has {self.k} class ({', '.join(self.ds.class_names)}); the study "
                            f"compares classifiers, which needs at least 2 classes (one sub-folder per class)")
        wanted = cfg.augment_classes or tuple(self.ds.class_names)
        missing = sorted(set(wanted) - set(self.ds.class_names))
        if missing:
            raise ConfigError(f"augment_classes {missing} not in the data's classes {self.ds.class_names}")
        self.augmented = [self.ds.class_names.index(c) for c in wanted]
        self._splits: dict[int, _Split] = {}
        self._generators: dict[tuple, torch.nn.Module] = {}

    def split(self, seed: int) -> _Split:
        if seed not in self._splits:
            s = splits.make_splits(self.y, self.ds.groups, fractions=self.cfg.split, seed=seed)
            self._splits[seed] = _Split(s["train"], s["val"], s["test"])
        return self._splits[seed]

    def check_sizes(self) -> None:
        """DataError before any training when a seed's split or a fraction's subset is too small.

        Every class needs an image in each seed's validation and test split (AUC needs both classes),
        one in the training subset of every fraction (the classifier sees every class) and two for
        every augmented class when generators are trained (a GAN needs at least 2 images).
        """
        names = self.ds.class_names
        for seed in self.cfg.seeds:
            sp = self.split(seed)
            for part in ("val", "test"):
                counts = np.bincount(self.y[getattr(sp, part)], minlength=self.k)
                if counts.min() < 1:
                    raise DataError(f"seed {seed}: the {part} split has no {names[int(counts.argmin())]!r} "
                                    f"image ({len(self.y)} images, split {list(self.cfg.split)}); use more "
                                    f"data or another split")
            need = {c: 2 if self.cfg.generators and c in self.augmented else 1 for c in range(self.k)}
            for fraction in self.cfg.fractions:
                counts = np.bincount(self.y[self.train_subset(fraction, seed)], minlength=self.k)
                short = [f"{names[c]!r} has {counts[c]} (needs {n})" for c, n in need.items() if counts[c] < n]
                if short:
                    raise DataError(f"seed {seed}, fraction {fraction:g}: training subset too small: "
                                    f"{', '.join(short)}")

    def train_subset(self, fraction: float, seed: int) -> np.ndarray:
        return splits.subsample_fraction(self.split(seed).train, self.y, fraction, seed=seed)

    def test_md5s(self, seed: int) -> list[str]:
        return [self.ds.md5s[i] for i in self.split(seed).test]

    def generator(self, preset: str, cls: int, fraction: float, seed: int) -> torch.nn.Module:
        """The GAN of one class, trained on that class's images of the training subset (cached)."""
        key = (preset, cls, fraction, seed)
        if key not in self._generators:
            self._generators[key] = self._load_or_train(*key)
        return self._generators[key]

    def _load_or_train(self, preset: str, cls: int, fraction: float, seed: int) -> torch.nn.Module:
        from . import train as T

        name = f"{preset}__{self.ds.class_names[cls]}__f{fraction:g}__s{seed}"
        run_dir = self.out / GENERATORS / name
        idx = self.train_subset(fraction, seed)
        idx = idx[self.y[idx] == cls]
        md5s = [self.ds.md5s[i] for i in idx]
        splits.assert_no_leak(self.test_md5s(seed), md5s)
        md5_file = run_dir / "train_md5s.json"
        if (run_dir / runs.NETWORK_FINAL).exists():
            if not md5_file.exists():
                raise RunError(f"{run_dir} has no {md5_file.name}: its training data cannot be checked for "
                               f"leakage; delete the folder to retrain it")
            stored = json.loads(md5_file.read_text())
            splits.assert_no_leak(self.test_md5s(seed), stored, what=f"test (generator {name})")
            return runs.load_run(run_dir)[1]
        if len(idx) < 2:
            raise DataError(f"class {self.ds.class_names[cls]!r} has {len(idx)} training image(s) at "
                            f"fraction {fraction:g}; a GAN needs at least 2")
        batch_size = self.cfg.gan_batch_size or T.PRESETS[preset].get("batch_size", T.TrainConfig.batch_size)
        # kimg is always set: None replaces a preset's own kimg, so gan_epochs is every preset's budget
        cfg = T.make_config(preset, image_size=self.cfg.image_size, channels=1, epochs=self.cfg.gan_epochs,
                            kimg=self.cfg.gan_kimg, batch_size=min(batch_size, len(idx)), base=self.cfg.gan_base,
                            seed=seed, device=self.cfg.device, n_fixed=16,
                            checkpoint_every=self.cfg.gan_epochs, sample_every=self.cfg.gan_epochs)
        resume = (run_dir / runs.STATE).exists()
        if not resume and run_dir.exists():  # a run killed before its first checkpoint: start afresh
            shutil.rmtree(run_dir)
        write_json_atomic(md5s, md5_file)  # before training, so no trained generator lacks one
        T.train(cfg, run_dir, images=self.ds.images[idx], resume=resume, progress=False)
        # sample from the saved network, as a resumed study will: the in-memory one (channels-last,
        # on the training device) gives float-level different images, enough to move a cell's AUC
        return runs.load_run(run_dir)[1]

    def synthetic(self, preset: str, fraction: float, seed: int, per_class: dict[int, int]
                  ) -> tuple[torch.Tensor, np.ndarray]:
        """``per_class[c]`` images of class c from its generator, on the CPU."""
        xs, ys = [], []
        for cls, n in per_class.items():
            if n <= 0:
                continue
            G = self.generator(preset, cls, fraction, seed)
            xs.append(runs.sample(G, n, seed=10_000 * seed + cls).cpu())
            ys.append(np.full(n, cls))
        if not xs:
            return torch.empty(0, 1, self.cfg.image_size, self.cfg.image_size), np.empty(0, dtype=int)
        return torch.cat(xs), np.concatenate(ys)


# ----------------------------------------------------------------------------------------- cells


def _classifier_config(cfg: StudyConfig, seed: int, augment: str, epochs: int) -> classify.ClassifierConfig:
    return classify.ClassifierConfig(
        backbone=cfg.backbone, pretrained=cfg.pretrained, epochs=epochs,
        batch_size=cfg.clf_batch_size, patience=cfg.clf_patience, lr=cfg.clf_lr, augment=augment,
        image_size=cfg.image_size, seed=seed, device=cfg.device)


def _fingerprint(md5s: list[str]) -> str:
    return hashlib.md5("".join(md5s).encode()).hexdigest()


def classifier_epochs(cfg: StudyConfig, n_real: int, n_train: int) -> int:
    """Maximum epochs of a cell with ``n_train`` training images, ``n_real`` of them real (see clf_budget).

    ``epochs``: ``clf_epochs`` for every cell. ``steps``: ``clf_epochs * n_real / n_train`` rounded to a
    whole number (at least 1), so a cell with k times real-only's images takes about as many steps.
    """
    if cfg.clf_budget == "epochs" or n_train <= 0:
        return cfg.clf_epochs
    return max(1, round(cfg.clf_epochs * n_real / n_train))


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimiser steps of one epoch of ``classify.train_classifier`` (a lone last image is skipped)."""
    rest = n % batch_size
    return n // batch_size + (1 if rest >= 2 or n == rest == 1 else 0)


def run_cell(study: _Study, cell: Cell) -> dict[str, Any]:
    """Train and test one classifier; the returned dict is the cell file's content."""
    cfg, ds = study.cfg, study.ds
    sp = study.split(cell.seed)
    real_idx = study.train_subset(cell.fraction, cell.seed)
    x_real, y_real = ds.images[real_idx], study.y[real_idx]
    n_real = {c: int((y_real == c).sum()) for c in range(study.k)}
    if cell.kind == "mixed":
        per_class = {c: int(round(cell.ratio * n_real[c])) for c in study.augmented}
        xs, ys = study.synthetic(cell.generator, cell.fraction, cell.seed, per_class)
        x_train, y_train = torch.cat([x_real, xs]), np.concatenate([y_real, ys])
    elif cell.kind == "synthetic":
        x_train, y_train = study.synthetic(cell.generator, cell.fraction, cell.seed, n_real)
    else:
        x_train, y_train = x_real, y_real
    augment = "classic" if cell.kind == "classic" else "none"
    epochs = classifier_epochs(cfg, len(y_real), len(y_train))
    model, history = classify.train_classifier(
        _classifier_config(cfg, cell.seed, augment, epochs), x_train, y_train, ds.images[sp.val],
        study.y[sp.val], progress=False, num_classes=study.k)
    metrics = classify.evaluate_classifier(model, ds.images[sp.test], study.y[sp.test], n_boot=cfg.n_boot,
                                           seed=cell.seed)
    scores = classify.predict_scores(model, ds.images[sp.test])
    return {**dataclasses.asdict(cell), "name": cell.name, "metrics": metrics,
            "n_train_real": 0 if cell.kind == "synthetic" else int(len(y_real)),
            "n_train_synthetic": int(len(y_train) - (0 if cell.kind == "synthetic" else len(y_real))),
            "best_epoch": history["best_epoch"], "train_seconds": history["train_seconds"],
            "clf_budget": cfg.clf_budget, "epochs_max": epochs, "epochs_run": len(history["epochs"]),
            "optimizer_steps": len(history["epochs"]) * steps_per_epoch(len(y_train), cfg.clf_batch_size),
            "test_labels": study.y[sp.test].tolist(), "test_scores": np.asarray(scores).tolist(),
            "test_fingerprint": _fingerprint(study.test_md5s(cell.seed)),
            "class_names": list(ds.class_names)}


@C.typed_keywords
def run_cells(cfg: StudyConfig, progress: bool = True) -> Path:
    """Run every cell not yet on disk; return the study folder."""
    cfg.validate()
    out = project_path(cfg.out)
    _check_out_dir(cfg, out, write=False)  # other settings or an unwritable folder: stop before loading
    todo = [c for c in grid(cfg) if not (out / CELLS / f"{c.name}.json").exists()]
    if not todo:
        _check_out_dir(cfg, out)
        return out
    from tqdm.auto import tqdm

    # everything that can fail is checked before the first GAN or classifier trains
    study = _Study(cfg, out, progress)
    study.check_sizes()
    for seed in cfg.seeds:  # duplicates across splits would leak through every generator: stop first
        splits.assert_no_leak(study.test_md5s(seed), [study.ds.md5s[i] for i in study.split(seed).train],
                              what=f"test (seed {seed})")
    _check_out_dir(cfg, out)
    total = len(grid(cfg))
    with tqdm(total=total, initial=total - len(todo), desc="study cells", unit="cell",
              disable=not progress) as bar:
        for cell in todo:
            bar.set_postfix_str(cell.name)
            write_json_atomic(run_cell(study, cell), out / CELLS / f"{cell.name}.json")
            bar.update()
    return out


# -------------------------------------------------------------------------------------- analysis


def load_cells(cfg: StudyConfig) -> list[dict[str, Any]]:
    """The finished cells of the configured grid (missing ones are skipped)."""
    folder = project_path(cfg.out) / CELLS
    paths = [folder / f"{c.name}.json" for c in grid(cfg)]
    return [json.loads(p.read_text()) for p in paths if p.exists()]


_METRICS = ("auc", "accuracy", "sensitivity", "specificity")


def results_table(cells: list[dict[str, Any]], n_boot: int) -> pd.DataFrame:
    """One row per cell: metrics with 95% CIs and the paired AUC deltas against real-only and classic."""
    by_key = {(c["condition"], c["fraction"], c["seed"]): c for c in cells}
    rows = []
    for c in cells:
        m = c["metrics"]
        row: dict[str, Any] = {k: c[k] for k in ("condition", "kind", "generator", "ratio", "fraction",
                                                 "seed", "n_train_real", "n_train_synthetic")}
        row |= {"backbone": m["backbone"], "weights": m["weights"], "n_test": m["n"],
                "epochs_run": c.get("epochs_run", float("nan")),
                "optimizer_steps": c.get("optimizer_steps", float("nan"))}
        for name in _METRICS:
            for suffix in ("", "_ci_low", "_ci_high"):
                row[name + suffix] = m.get(name + suffix, float("nan"))
        for base, tag in ((REAL, "real"), (CLASSIC, "classic")):
            ref = by_key.get((base, c["fraction"], c["seed"]))
            d = {"delta": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "p_value": float("nan")}
            if ref is not None and c["condition"] != base:
                if ref["test_fingerprint"] != c["test_fingerprint"]:
                    raise DataError(f"cells {ref['name']} and {c['name']} were tested on different images")
                d = stats.paired_bootstrap_delta(np.asarray(c["test_labels"]), np.asarray(ref["test_scores"]),
                                                    np.asarray(c["test_scores"]), n_boot=n_boot, seed=c["seed"])
            row |= {f"dauc_vs_{tag}": d["delta"], f"dauc_vs_{tag}_ci_low": d["ci_low"],
                    f"dauc_vs_{tag}_ci_high": d["ci_high"], f"dauc_vs_{tag}_p": d["p_value"]}
        rows.append(row)
    return pd.DataFrame(rows)


def summary_table(cells: list[dict[str, Any]], n_boot: int, order: list[str]) -> pd.DataFrame:
    """Per (condition, fraction): mean AUC over seeds with a pooled CI, and pooled paired AUC deltas.

    Each delta has a plain 95% CI and a Bonferroni-adjusted one (``_adj_low``/``_adj_high``: level
    1 - 0.05/m for the m comparisons against that baseline), so that the verdict, which reads many
    intervals at once, keeps a 5% chance of any false claim.
    """
    groups: dict[tuple[str, float], list[dict]] = {}
    for c in cells:
        groups.setdefault((c["condition"], c["fraction"]), []).append(c)
    by_key = {(c["condition"], c["fraction"], c["seed"]): c for c in cells}
    n_comparisons = {base: sum(cond != base for cond, _ in groups) for base in (REAL, CLASSIC)}
    rows = []
    for (cond, frac), members in sorted(groups.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        tests = [(np.asarray(c["test_labels"]), None, np.asarray(c["test_scores"])) for c in members]
        auc, [(low, high)] = stats.pooled_bootstrap(tests, n_boot, seed=1)
        row: dict[str, Any] = {"condition": cond, "fraction": frac, "n_seeds": len(members),
                               "auc_mean": auc, "auc_sd": float(np.std([c["metrics"]["auc"] for c in members], ddof=1))
                               if len(members) > 1 else float("nan"), "auc_ci_low": low, "auc_ci_high": high}
        for base, tag in ((REAL, "real"), (CLASSIC, "classic")):
            pairs = [(c, by_key.get((base, frac, c["seed"]))) for c in members]
            pairs = [(c, r) for c, r in pairs if r is not None]
            if cond == base or not pairs:
                row |= {f"dauc_vs_{tag}{k}": float("nan") for k in ("", "_ci_low", "_ci_high", "_adj_low",
                                                                    "_adj_high")}
                row[f"dauc_vs_{tag}_seeds_better"] = ""
                continue
            tests = [(np.asarray(c["test_labels"]), np.asarray(r["test_scores"]), np.asarray(c["test_scores"]))
                     for c, r in pairs]
            adjusted = 0.05 / max(n_comparisons[base], 1)
            d, [(dl, dh), (al, ah)] = stats.pooled_bootstrap(tests, n_boot, seed=2, alphas=(0.05, adjusted))
            per_seed = [stats.macro_auc(y, b) - stats.macro_auc(y, a) for y, a, b in tests]
            row |= {f"dauc_vs_{tag}": d, f"dauc_vs_{tag}_ci_low": dl, f"dauc_vs_{tag}_ci_high": dh,
                    f"dauc_vs_{tag}_adj_low": al, f"dauc_vs_{tag}_adj_high": ah,
                    f"dauc_vs_{tag}_seeds_better": f"{sum(v > 0 for v in per_seed)}/{len(per_seed)}"}
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt_delta(d: float, low: float, high: float) -> str:
    return f"{d:+.3f} [{low:+.3f}, {high:+.3f}]"


def verdict(summary: pd.DataFrame, weights: str, backbone: str) -> list[str]:
    """Plain-language conclusions, each decided by whether an adjusted interval excludes zero.

    ``summary`` needs the columns of :func:`summary_table`: condition, fraction and, for tag in
    real/classic, ``dauc_vs_<tag>``, ``dauc_vs_<tag>_adj_low``, ``dauc_vs_<tag>_adj_high``. The
    Bonferroni-adjusted intervals are the ones quoted, since the verdict reads all comparisons at once.
    """
    start = "ImageNet weights" if weights == "imagenet" else "trained from scratch"
    lines = [f"Classifier: {backbone}, {start} ({weights}). A difference counts only when its pooled, "
             f"Bonferroni-adjusted 95% CI excludes 0 (intervals below are those adjusted CIs)."]

    def delta(r: pd.Series, tag: str) -> str:
        return _fmt_delta(r[f"dauc_vs_{tag}"], r[f"dauc_vs_{tag}_adj_low"], r[f"dauc_vs_{tag}_adj_high"])

    others = summary[summary["condition"] != REAL].dropna(subset=["dauc_vs_real"])
    decided = others[(others["dauc_vs_real_adj_low"] > 0) | (others["dauc_vs_real_adj_high"] < 0)]
    for _, r in decided.iterrows():
        word = "improves" if r["dauc_vs_real_adj_low"] > 0 else "lowers"
        lines.append(f"{r['condition']} {word} AUC over real-only at fraction {r['fraction']:g}: "
                     f"delta {delta(r, 'real')}")
    if decided.empty and len(others):
        widest = float((others["dauc_vs_real_adj_high"] - others["dauc_vs_real_adj_low"]).max())
        lines.append(f"no condition differs from real-only at any fraction: every CI includes 0 "
                     f"(the widest spans {widest:.3f} AUC)")
    synth = summary[~summary["condition"].isin([REAL, CLASSIC])].dropna(subset=["dauc_vs_classic"])
    if len(synth):
        wins = synth[synth["dauc_vs_classic_adj_low"] > 0]
        for _, r in wins.iterrows():
            lines.append(f"{r['condition']} beats the classic augmentation control at fraction "
                         f"{r['fraction']:g}: delta {delta(r, 'classic')}")
        if wins.empty:
            best = synth.loc[synth["dauc_vs_classic"].idxmax()]
            lines.append(f"no synthetic condition beats the classic augmentation control (best: "
                         f"{best['condition']} at fraction {best['fraction']:g}, delta {delta(best, 'classic')})")
    return lines


def plot_auc_vs_fraction(summary: pd.DataFrame, path: str | Path, title: str = ""):
    """Mean test AUC over seeds against the real-data fraction, one line per condition, pooled CIs."""
    from .plots import figure, finish

    fig = figure(7.5, 4.8)
    ax = fig.add_subplot()
    conds = list(dict.fromkeys(summary["condition"]))
    for i, cond in enumerate(conds):
        s = summary[summary["condition"] == cond].sort_values("fraction")
        x = s["fraction"].to_numpy() * (1 + 0.025 * (i - (len(conds) - 1) / 2))  # dodge the error bars
        err = np.stack([s["auc_mean"] - s["auc_ci_low"], s["auc_ci_high"] - s["auc_mean"]])
        style = dict(lw=2.5, color="black") if cond == REAL else dict(lw=2, ls="--") if cond == CLASSIC else {}
        ax.errorbar(x, s["auc_mean"], yerr=err, marker="o", capsize=3, label=cond, **style)
    ax.set_xscale("log")
    fr = sorted(summary["fraction"].unique())
    ax.set_xticks(fr, [f"{f:g}" for f in fr])
    ax.minorticks_off()
    ax.set_xlabel("fraction of the real training split")
    ax.set_ylabel("test AUC (mean over seeds, pooled 95% CI)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return finish(fig, path)


def _markdown(df: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _ci(v: float, low: float, high: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.3f} [{low:.3f}, {high:.3f}]"


def display_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary with each estimate and its CI in one readable column."""
    return pd.DataFrame({
        "condition": summary["condition"], "fraction": summary["fraction"], "seeds": summary["n_seeds"],
        "AUC [95% CI]": [_ci(*v) for v in summary[["auc_mean", "auc_ci_low", "auc_ci_high"]].to_numpy()],
        "dAUC vs real [95% CI]": [_ci(*v) for v in summary[["dauc_vs_real", "dauc_vs_real_ci_low",
                                                            "dauc_vs_real_ci_high"]].to_numpy()],
        "adjusted CI": ["" if math.isnan(lo) else f"[{lo:.3f}, {hi:.3f}]"
                        for lo, hi in summary[["dauc_vs_real_adj_low", "dauc_vs_real_adj_high"]].to_numpy()],
        "seeds better": summary["dauc_vs_real_seeds_better"],
        "dAUC vs classic [95% CI]": [_ci(*v) for v in summary[["dauc_vs_classic", "dauc_vs_classic_ci_low",
                                                               "dauc_vs_classic_ci_high"]].to_numpy()],
    })


@dataclass
class StudyReport:
    """What the analysis wrote: the tables, the verdict lines and the file paths."""

    results: pd.DataFrame
    summary: pd.DataFrame
    verdict: list[str]
    weights: str
    paths: dict[str, Path]


def analyze(cfg: StudyConfig) -> StudyReport:
    """Tables, plot and verdict from the finished cells of ``cfg``'s grid."""
    cells = load_cells(cfg)
    if not cells:
        raise DataError(f"no finished cells in {project_path(cfg.out) / CELLS}; run the study first")
    out = project_path(cfg.out)
    weights = sorted({c["metrics"]["weights"] for c in cells})
    weights_label = weights[0] if len(weights) == 1 else " / ".join(weights)
    order = [c[0] for c in conditions(cfg)]
    results = results_table(cells, cfg.n_boot)
    summary = summary_table(cells, cfg.n_boot, order)
    lines = verdict(summary, weights_label, cfg.backbone)
    header = (f"Synthetic-augmentation study: {cfg.backbone}, weights: {weights_label}; source {cfg.source}, "
              f"{cfg.image_size}px, seeds {list(cfg.seeds)}, n_test per seed "
              f"{sorted({c['metrics']['n'] for c in cells})}, {cfg.n_boot} bootstrap resamples; classifiers "
              f"get equal {'epochs (more images = more steps)' if cfg.clf_budget == 'epochs' else 'optimiser steps'}")
    paths = {"results_csv": out / "results.csv", "summary_csv": out / "summary.csv",
             "table_md": out / "results.md", "table_html": out / "results.html",
             "plot": out / "auc_vs_fraction.png", "verdict": out / "verdict.txt"}
    results.to_csv(paths["results_csv"], index=False)
    summary.to_csv(paths["summary_csv"], index=False)
    shown = display_table(summary)
    paths["table_md"].write_text(f"{header}\n\n{_markdown(shown)}\n\n" + "\n".join(f"- {v}" for v in lines) + "\n")
    paths["table_html"].write_text(f"<p>{header}</p>\n" + shown.to_html(index=False) + "\n<ul>"
                                   + "".join(f"<li>{v}</li>" for v in lines) + "</ul>\n")
    plot_auc_vs_fraction(summary, paths["plot"], title=f"{cfg.backbone} ({weights_label}), {cfg.source}")
    paths["verdict"].write_text(header + "\n" + "\n".join(lines) + "\n")
    return StudyReport(results, summary, lines, weights_label, paths)


@C.typed_keywords
def run_study(cfg: StudyConfig | None = None, progress: bool = True, **overrides: Any) -> StudyReport:
    """Run (or resume) every cell, then analyse: the one call the notebook and the CLI make."""
    cfg = C.apply_overrides(cfg or StudyConfig(), overrides)
    run_cells(cfg, progress=progress)
    return analyze(cfg)


# ------------------------------------------------------------------------------------------- CLI


def cli_add_arguments(parser: argparse.ArgumentParser) -> None:
    C.add_arguments(parser, StudyConfig)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def cli_run(args: argparse.Namespace) -> int:
    cfg = C.apply_overrides(StudyConfig(), C.overrides_from_args(args, StudyConfig))
    report = run_study(cfg, progress=not args.no_progress)
    print("\n".join(report.verdict))
    for name, path in report.paths.items():
        print(f"{name}: {path}")
    return 0
