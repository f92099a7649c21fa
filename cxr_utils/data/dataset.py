"""The loaded data set (:class:`CXRDataset`) and the source-independent item steps: class selection
and exact-duplicate removal.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .report import DataReport


@dataclass(eq=False, repr=False)
class CXRDataset(Dataset):
    """Images (N, C, S, S) float32 in [-1, 1] with labels and per-item provenance."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    ids: list[str]
    md5s: list[str]
    groups: list[str]
    report: DataReport
    source: str
    splits: list[str] = field(default_factory=list)  # "train"/"val"/"test" where the source says, else ""

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.images.shape[1:])
        return f"CXRDataset({self.source!r}, n={len(self)}, {shape}, classes={self.class_names})"

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> CXRDataset:
        """The items at ``indices`` (or a boolean mask); the report still describes the whole load."""
        idx = torch.as_tensor(np.asarray(indices))
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        idx = idx.long()
        pick = idx.tolist()
        return CXRDataset(
            images=self.images[idx], labels=self.labels[idx], class_names=list(self.class_names),
            ids=[self.ids[i] for i in pick], md5s=[self.md5s[i] for i in pick],
            groups=[self.groups[i] for i in pick], report=self.report, source=self.source,
            splits=[self.splits[i] for i in pick] if self.splits else [],
        )


def _pick_classes(found: Sequence[str], wanted: list[str] | None) -> list[str]:
    """The class names of the dataset, in label order; unknown wanted names are an error."""
    if wanted is None:
        return sorted(set(found))
    unknown = [c for c in wanted if c not in set(found)]
    if unknown:
        raise DataError(f"unknown class name(s) {unknown}; found classes: {', '.join(sorted(set(found)))}")
    return wanted



@dataclass
class _Items:
    images: np.ndarray  # uint8 (N, S, S)
    labels: np.ndarray  # int64 (N,) into class_names
    class_names: list[str]
    ids: list[str]
    md5s: list[str]
    groups: list[str]
    splits: list[str]

    def take(self, keep: Sequence[int]) -> _Items:
        keep = list(keep)
        return _Items(self.images[keep], self.labels[keep], self.class_names,
                      [self.ids[i] for i in keep], [self.md5s[i] for i in keep],
                      [self.groups[i] for i in keep], [self.splits[i] for i in keep])


def _select_classes(items: _Items, wanted: list[str] | None) -> _Items:
    """Keep the ``wanted`` classes, relabelled in that order; without a wish keep the source's order."""
    if wanted is None or wanted == items.class_names:
        return items
    names = _pick_classes(items.class_names, wanted)
    new_label = {items.class_names.index(c): i for i, c in enumerate(names)}
    keep = [i for i, lab in enumerate(items.labels.tolist()) if lab in new_label]
    out = items.take(keep)
    out.labels = np.array([new_label[lab] for lab in out.labels.tolist()], dtype=np.int64)
    out.class_names = names
    return out


def _deduplicate(items: _Items, dedup: bool, report: DataReport) -> _Items:
    """Report exact duplicates (same MD5); with ``dedup`` keep only the first of each group."""
    by_md5: dict[str, list[int]] = defaultdict(list)
    for i, m in enumerate(items.md5s):
        by_md5[m].append(i)
    groups = [g for g in by_md5.values() if len(g) > 1]
    report.duplicate_groups = [[items.ids[i] for i in g] for g in groups]
    drop = {i for g in groups for i in g[1:]} if dedup else set()
    report.duplicates_removed = len(drop)
    return items.take([i for i in range(len(items.ids)) if i not in drop]) if drop else items


