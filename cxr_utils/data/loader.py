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

from ..config import coerce
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


BIT_SCALINGS = ("per-image", "dataset", "fixed")

# the type of every keyword of ``load``; values go through ``config.coerce`` like CLI flags and papermill
# parameters do, so "false" is False and "64" is 64 wherever the value comes from
LOAD_TYPES: dict[str, Any] = {
    "source": str, "image_size": int, "channels": int, "classes": list[str] | None, "crop": str,
    "equalize": bool, "dedup": bool, "cache": bool, "cache_dir": str | Path, "seed": int, "progress": bool,
    "bit_scaling": str, "keep_constant": bool,
}


def load(source: str | os.PathLike = "phantom", image_size: int = 64, channels: int = 1,
         classes: Sequence[str] | str | None = None, crop: str = "center", equalize: bool = False,
         dedup: bool = True, cache: bool = True, cache_dir: str | Path = "data/cache", seed: int = 0,
         progress: bool = True, bit_scaling: str = "per-image", keep_constant: bool = False) -> CXRDataset:
    """Load ``source`` (see the package docstring) as a preprocessed, de-duplicated, cached dataset.

    Returns a :class:`CXRDataset` with images ``(N, channels, image_size, image_size)`` float32 in
    [-1, 1]. ``classes`` selects classes and fixes their label order (a list or a comma-separated
    string). ``seed`` only matters for the phantom. ``bit_scaling`` says how images of more than
    8 bits (16-bit PNG/TIFF) become 8-bit: ``"per-image"`` by the bits each image uses,
    ``"dataset"`` by the most bits any image of the load uses (relative brightness between images is
    kept), ``"fixed"`` by the bits of the file's container (16-bit: ``v * 255 / 65535``).
    Constant images (every pixel equal) are left out and reported, so they are never trained on;
    ``keep_constant=True`` keeps them, for folders of generated samples whose collapse is being measured.

    Every keyword passes through :func:`cxr_utils.config.coerce` (strings from papermill or the
    CLI: ``"false"``/``"no"``/``"0"`` are False, ``"64"`` is 64); a value of the wrong type is a
    one-line ``ConfigError``. Every problem with the source or an option value is a one-line
    ``DataError``; unreadable and constant images are left out and listed in ``report.skipped``.
    """
    given = {"source": os.fspath(source) if isinstance(source, os.PathLike) else source,
             "image_size": image_size, "channels": channels, "classes": classes, "crop": crop,
             "equalize": equalize, "dedup": dedup, "cache": cache, "cache_dir": cache_dir, "seed": seed,
             "progress": progress, "bit_scaling": bit_scaling, "keep_constant": keep_constant}
    v = {name: coerce(name, value, LOAD_TYPES[name]) for name, value in given.items()}
    source, image_size, channels, crop = v["source"], v["image_size"], v["channels"], v["crop"]
    equalize, dedup, progress, seed, bit_scaling = v["equalize"], v["dedup"], v["progress"], v["seed"], \
        v["bit_scaling"]
    kind, arg = parse_source(source)
    _check_size(kind, image_size)
    _check_options(channels, crop)
    if bit_scaling not in BIT_SCALINGS:
        raise DataError(f"bit_scaling must be one of {', '.join(BIT_SCALINGS)}, got {bit_scaling!r}")
    wanted = _class_list(v["classes"])
    options: dict[str, Any] = {"image_size": image_size, "crop": crop, "equalize": equalize,
                               "dedup": dedup, "classes": wanted, "bit_scaling": bit_scaling,
                               "keep_constant": v["keep_constant"]}
    report = DataReport(source=source)

    if kind == "folder":
        root = _folder_root(str(arg))
        scan = _scan_folder(root)
        report.ignored, report.duplicate_trees = scan.ignored, scan.duplicate_trees
        files = scan.files
        if not files:
            ignored = "; ".join(f"{n} {why}" for why, n in scan.ignored.items())
            raise DataError(f"no image files ({', '.join(IMAGE_SUFFIXES)} or DICOM by content) under {root}"
                            + (f"; ignored: {ignored}" if ignored else ""))
        class_names = _pick_classes([f.cls for f in files], wanted)
        files = [f for f in files if f.cls in class_names]
        material = {"kind": kind, "root": str(root), "options": options,
                    "files": [(f.rel, f.size, f.mtime_ns) for f in files]}
        report.options = dict(options, root=str(root))
        build = partial(_build_folder, root, files, class_names, image_size, crop, progress, report, bit_scaling,
                        v["keep_constant"])
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
    cache_path = project_path(v["cache_dir"]) / f"{key}.pt" if v["cache"] else None
    blob = _read_cache(cache_path, key) if cache_path else None
    from_cache = blob is not None
    if blob is None:
        blob = _build(build, wanted, equalize, dedup, report, key, v["keep_constant"])
        if cache_path:
            _write_cache(cache_path, blob)
    return _to_dataset(blob, source, channels, from_cache, cache_path)


def _drop_constant(items: _Items, report: DataReport) -> _Items:
    """Leave out images whose every pixel is equal (a blank export, a failed window): nothing to learn."""
    flat = items.images.reshape(len(items.images), -1)
    constant = np.flatnonzero(flat.min(axis=1) == flat.max(axis=1)) if len(flat) else np.array([], int)
    if not len(constant):
        return items
    report.skipped = list(report.skipped) + [
        (items.ids[i], f"constant image (every pixel is {int(flat[i, 0])}): left out") for i in constant]
    report.decoded -= len(constant)
    drop = set(constant.tolist())
    return items.take([i for i in range(len(items.ids)) if i not in drop])


def _build(build: Callable[[], _Items], wanted: list[str] | None, equalize: bool, dedup: bool,
           report: DataReport, key: str, keep_constant: bool = False) -> dict[str, Any]:
    items = _select_classes(build(), wanted)
    if not report.files_found:  # array sources: every selected item was "found" and "decoded"
        report.files_found = report.decoded = len(items.ids)
        if not keep_constant:  # (folder files are checked right after decoding)
            items = _drop_constant(items, report)
    if not items.ids:
        raise DataError(f"every image of {report.source} is constant; nothing to train on "
                        f"(e.g. {report.skipped[0][0]}: {report.skipped[0][1]})")
    if equalize:
        items.images = _equalize(items.images)
    before = {c: int((items.labels == i).sum()) for i, c in enumerate(items.class_names)}
    items = _deduplicate(items, dedup, report)
    report.class_counts = {c: int((items.labels == i).sum()) for i, c in enumerate(items.class_names)}
    emptied = [c for c, n in report.class_counts.items() if n == 0 and before[c] > 0]
    if emptied:
        raise DataError(f"class(es) {emptied} are empty after de-duplication: each of their images is an exact "
                        f"copy of an image in another class (e.g. {' = '.join(report.duplicate_groups[0][:2])}); "
                        f"fix the folder layout or pass dedup=False")
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


