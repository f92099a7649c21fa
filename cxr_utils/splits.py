"""Leak-free train/validation/test splits.

Images of one patient are correlated, so a patient seen in training makes the test score optimistic:
splits are made over *groups* (patient ids, or image ids when no patient is known) and stratified by
class, fixed by a seed. ``assert_no_leak`` guards the other leak of this project: a GAN trained on
images that later sit in the classifier's test set.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

import numpy as np

from .errors import DataError

SPLIT_NAMES = ("train", "val", "test")

# The one patient-id rule of the project (data.load's ``groups`` and the splits both use it).
# Matching ignores case; the id is returned in the dataset's own spelling (person ids lower case,
# Kermany normal ids upper case), so "Person1_x" and "person1_y" are one patient.
# Kermany et al. (2018) pediatric pneumonia: "person123_bacteria_456.jpeg", "person1_virus_6.jpeg"
_KERMANY_PERSON = re.compile(r"^(person\d+)_", re.IGNORECASE)
# Kermany normal images: "IM-0001-0001.jpeg", "NORMAL2-IM-1427-0001.jpeg" (NORMAL<k>- is a separate numbering)
_KERMANY_IM = re.compile(r"^((?:NORMAL\d*-)?IM-\d+)-\d+", re.IGNORECASE)
# NIH ChestX-ray14: "00001308_002.png" is follow-up 2 of patient 00001308
_NIH = re.compile(r"^(\d{8})_\d{3}$")
_EXTENSION = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,4}$")


def patient_id_from_name(path: str | Path) -> str:
    """The patient an image file belongs to, from the naming rules of Kermany et al. (2018) and NIH
    ChestX-ray14 (Wang et al., 2017), matched on the file stem, case-insensitively.

    ``"chest_xray/train/PNEUMONIA/Person1_virus_6.jpeg"`` -> ``"person1"``,
    ``"normal2-im-1427-0001.jpeg"`` -> ``"NORMAL2-IM-1427"``, ``"00001308_002.png"`` -> ``"00001308"``.
    Unknown names fall back to the whole path as given (``"Cancer/a.png"``, the item id of
    ``data.load``), so every such image is its own group and equal file names in two folders stay apart.
    """
    full = str(PurePosixPath(str(path).replace("\\", "/")))
    # only a real extension (a letter first) is dropped: DICOM exports named by UID ("1.2.840.5.17")
    # have dots but no extension
    stem = _EXTENSION.sub("", full.rsplit("/", 1)[-1])
    m = _KERMANY_PERSON.match(stem)
    if m:
        return m.group(1).lower()
    m = _KERMANY_IM.match(stem)
    if m:
        return m.group(1).upper()
    m = _NIH.match(stem)
    if m:
        return m.group(1)
    return full


def _group_codes(groups: Sequence | np.ndarray | None, n: int) -> np.ndarray:
    if groups is None:
        return np.arange(n)
    groups = np.asarray(groups)
    if len(groups) != n:
        raise DataError(f"groups has {len(groups)} entries but labels has {n}")
    return np.unique(groups, return_inverse=True)[1].reshape(-1)


def _check_fractions(fractions: Sequence[float], names: Sequence[str]) -> np.ndarray:
    f = np.asarray(fractions, dtype=float)
    if len(f) != len(names):
        raise DataError(f"{len(f)} fractions for {len(names)} split names {list(names)}")
    if np.any(f < 0) or not np.isclose(f.sum(), 1.0, atol=1e-6):
        raise DataError(f"split fractions must be non-negative and sum to 1, got {list(fractions)}")
    return f


def make_splits(labels: Sequence[int] | np.ndarray, groups: Sequence | np.ndarray | None = None,
                fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0,
                names: Sequence[str] = SPLIT_NAMES) -> dict[str, np.ndarray]:
    """Split sample indices by group, stratified by class; the same seed gives the same split.

    Greedy allocation: groups are visited largest first (ties in a seeded random order) and each goes
    to the split whose per-class counts it brings closest to the target ``fraction x class total``
    (squared error, scaled by class size so a rare class counts as much as a common one). No group
    is ever in two splits. Returns sorted index arrays keyed by ``names``.
    """
    y = np.asarray(labels).reshape(-1)
    n = len(y)
    f = _check_fractions(fractions, names)
    if n == 0:
        raise DataError("cannot split an empty data set")
    classes, y_code = np.unique(y, return_inverse=True)
    g = _group_codes(groups, n)
    n_groups = int(g.max()) + 1
    counts = np.zeros((n_groups, len(classes)))
    np.add.at(counts, (g, y_code), 1)

    class_totals = counts.sum(axis=0)
    target = f[:, None] * class_totals[None, :]
    current = np.zeros_like(target)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_groups)
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    assignment = np.empty(n_groups, dtype=int)
    for gi in order:
        v = counts[gi]
        # increase of sum_c (current + v - target)^2 / total_c for each split
        cost = ((2 * (current - target) + v) * v / class_totals).sum(axis=1)
        cost[f == 0] = np.inf
        s = int(np.argmin(cost))
        assignment[gi] = s
        current[s] += v

    sample_split = assignment[g]
    splits = {name: np.flatnonzero(sample_split == i) for i, name in enumerate(names)}
    empty = [name for i, name in enumerate(names) if f[i] > 0 and len(splits[name]) == 0]
    if empty:
        raise DataError(f"split(s) {empty} came out empty: {n_groups} groups are too few for "
                        f"fractions {list(fractions)}")
    return splits


def subsample_fraction(train_idx: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray,
                       fraction: float, seed: int = 0) -> np.ndarray:
    """A stratified ``fraction`` of ``train_idx`` (indices into ``labels``), sorted.

    Each class is shuffled once per seed and its first ``round(fraction x n_class)`` indices kept
    (at least one), so for one seed a smaller fraction is always a subset of a larger one: the
    learning curve adds data rather than swapping it.
    """
    if not 0 < fraction <= 1:
        raise DataError(f"fraction must be in (0, 1], got {fraction}")
    idx = np.asarray(train_idx, dtype=int).reshape(-1)
    y = np.asarray(labels).reshape(-1)[idx]
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(y):
        members = idx[y == c]
        members = members[rng.permutation(len(members))]
        k = max(1, int(round(fraction * len(members))))
        keep.append(members[:k])
    return np.sort(np.concatenate(keep))


def assert_no_leak(test_md5s: Iterable[str], generator_train_md5s: Iterable[str],
                   what: str = "test") -> None:
    """Raise DataError if any evaluation image was also in a generator's training set."""
    shared = set(test_md5s) & set(generator_train_md5s)
    if shared:
        example = sorted(shared)[0]
        raise DataError(f"{len(shared)} {what} image(s) are also in the generator's training set "
                        f"(e.g. MD5 {example}); re-split or retrain the generator on the train split only")


def split_table(splits: dict[str, np.ndarray], labels: Sequence[int] | np.ndarray,
                class_names: Sequence[str] | None = None,
                groups: Sequence | np.ndarray | None = None):
    """Per-split image counts by class (and group counts), as a pandas DataFrame for reports."""
    import pandas as pd

    y = np.asarray(labels).reshape(-1)
    classes = np.unique(y)
    rows = []
    for split, idx in splits.items():
        row: dict[str, object] = {"split": split, "images": len(idx)}
        for c in classes:
            column = class_names[int(c)] if class_names is not None else str(c)
            row[column] = int((y[idx] == c).sum())
        if groups is not None:
            row["groups"] = len(np.unique(np.asarray(groups)[idx]))
        rows.append(row)
    return pd.DataFrame(rows).set_index("split")
