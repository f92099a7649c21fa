"""``load(source, ...)``: every source to one preprocessed, de-duplicated, cached :class:`CXRDataset`."""

from __future__ import annotations

import hashlib
import json
import os
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import DataError
from ..images import from_uint8
from ..paths import project_path
from .cache import FORMAT_VERSION, _cache_key, _read_cache, _write_cache
from .dataset import CXRDataset, _deduplicate, _Items, _pick_classes, _select_classes
from .decode import IMAGE_SUFFIXES
from .folder import _build_folder, _folder_root, _scan_folder
from .medmnist import _build_medmnist, _ensure_medmnist
from .preprocess import _equalize
from .report import DataReport
from .source import _check_options, _check_size, _class_list, parse_source


def _build_phantom(n: int, image_size: int, seed: int, progress: bool, report: DataReport) -> _Items:
    from .. import phantom

    ps = phantom.generate(n, size=image_size, seed=seed, progress=progress)
    images = np.ascontiguousarray(ps.images, dtype=np.uint8)
    ids = [f"phantom/{i:06d}" for i in range(len(images))]
    report.original_sizes = {f"{image_size}x{image_size}": len(images)}
    report.bit_depths = {"8": len(images)}
    return _Items(images, np.asarray(ps.labels, dtype=np.int64), list(ps.class_names), ids,
                  [hashlib.md5(im.tobytes()).hexdigest() for im in images], list(ids), [""] * len(ids))


def load(source: str = "phantom", image_size: int = 64, channels: int = 1, classes: Sequence[str] | None = None,
         crop: str = "center", equalize: bool = False, dedup: bool = True, cache: bool = True,
         cache_dir: str | Path = "data/cache", seed: int = 0, progress: bool = True) -> CXRDataset:
    """Load ``source`` (see the module docstring) as a preprocessed, de-duplicated, cached dataset.

    ``classes`` selects classes and fixes their label order (a list or a comma-separated string).
    ``seed`` only matters for the phantom. Every problem with the source or the options is a
    one-line :class:`DataError`; unreadable files are skipped and listed in ``report.skipped``.
    """
    source = os.fspath(source) if isinstance(source, os.PathLike) else source
    kind, arg = parse_source(source)
    _check_size(kind, image_size)
    _check_options(channels, crop)
    wanted = _class_list(classes)
    options: dict[str, Any] = {"image_size": image_size, "crop": crop, "equalize": bool(equalize),
                               "dedup": bool(dedup), "classes": wanted}
    report = DataReport(source=source)

    if kind == "folder":
        root = _folder_root(str(arg))
        files = _scan_folder(root)
        if not files:
            raise DataError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {root}")
        class_names = _pick_classes([f.cls for f in files], wanted)
        files = [f for f in files if f.cls in class_names]
        material = {"kind": kind, "root": str(root), "options": options,
                    "files": [(f.rel, f.size, f.mtime_ns) for f in files]}
        report.options = dict(options, root=str(root))
        build = partial(_build_folder, root, files, class_names, image_size, crop, progress, report)
    elif kind == "medmnist":
        flag, _, split = str(arg).partition(":")
        npz = _ensure_medmnist(flag, image_size)
        st = npz.stat()
        material = {"kind": kind, "flag": flag, "split": split, "options": options,
                    "npz": (str(npz.resolve()), st.st_size, st.st_mtime_ns)}
        report.options = dict(options, npz=str(npz))
        build = partial(_build_medmnist, flag, split, image_size, report)
    else:
        from .. import phantom

        material = {"kind": kind, "n": arg, "seed": seed, "options": options,
                    "generator": hashlib.md5(Path(phantom.__file__).read_bytes()).hexdigest()}
        report.options = dict(options, seed=seed)
        build = partial(_build_phantom, int(arg), image_size, seed, progress, report)

    key = _cache_key(material)
    cache_path = project_path(cache_dir) / f"{key}.pt" if cache else None
    blob = _read_cache(cache_path, key) if cache_path else None
    from_cache = blob is not None
    if blob is None:
        blob = _build(build, wanted, equalize, dedup, report, key)
        if cache_path:
            _write_cache(cache_path, blob)
    return _to_dataset(blob, source, channels, from_cache, cache_path)


def _build(build: Callable[[], _Items], wanted: list[str] | None, equalize: bool, dedup: bool,
           report: DataReport, key: str) -> dict[str, Any]:
    items = _select_classes(build(), wanted)
    if not report.files_found:  # array sources: every selected item was "found" and "decoded"
        report.files_found = report.decoded = len(items.ids)
    if equalize:
        items.images = _equalize(items.images)
    items = _deduplicate(items, dedup, report)
    report.class_counts = {c: int((items.labels == i).sum()) for i, c in enumerate(items.class_names)}
    meta = {"class_names": items.class_names, "ids": items.ids, "md5s": items.md5s, "groups": items.groups,
            "splits": items.splits, "report": report.to_dict()}
    # the per-item strings travel as one JSON string: unpickling thousands of small objects is slow
    return {"format": FORMAT_VERSION, "key": key, "images": torch.from_numpy(np.ascontiguousarray(items.images)),
            "labels": torch.from_numpy(items.labels), "meta": json.dumps(meta)}


def _to_dataset(blob: dict[str, Any], source: str, channels: int, from_cache: bool,
                cache_path: Path | None) -> CXRDataset:
    meta = json.loads(blob["meta"])
    report = DataReport.from_dict(meta["report"])
    report.source = source
    report.from_cache = from_cache
    report.options = dict(report.options, channels=channels, cache_file=str(cache_path) if cache_path else None)
    images = from_uint8(blob["images"]).unsqueeze(1)
    if channels == 3:
        images = images.repeat(1, 3, 1, 1)
    return CXRDataset(images=images, labels=blob["labels"].long(), class_names=meta["class_names"],
                      ids=meta["ids"], md5s=meta["md5s"], groups=meta["groups"], report=report, source=source,
                      splits=meta["splits"])


