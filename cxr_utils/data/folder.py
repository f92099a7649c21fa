"""Folder sources: layout discovery (classes, split folders), file selection, decoding in threads."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import DataError
from ..paths import project_path
from ..splits import patient_id_from_name
from .dataset import _Items
from .decode import IMAGE_SUFFIXES, _decode_file, _Undecodable
from .preprocess import _to_square_uint8
from .report import DataReport

SOURCE_FORMS = "a folder path, medmnist:<flag>[:train|val|test], phantom or phantom:<N>"
_SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "test": "test", "testing": "test"}


@dataclass(frozen=True)
class _File:
    path: str
    rel: str
    cls: str
    split: str
    size: int
    mtime_ns: int


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _looks_like_image(name: str, path: str) -> bool:
    """By suffix, or, for a name without one, by the DICOM ``DICM`` marker."""
    if name.lower().endswith(IMAGE_SUFFIXES):
        return True
    if "." in name:
        return False
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _folder_labels(dirs: list[tuple[str, ...]], root: Path) -> tuple[list[str], list[str]]:
    """(class, split) per file from the folders between the root and it (rule in the module docstring)."""
    root_split = _SPLIT_FOLDERS.get(root.name.lower(), "")
    unique = sorted(set(dirs))  # decided per folder, not per file: this runs on every load
    splits = [next((_SPLIT_FOLDERS[p.lower()] for p in d if p.lower() in _SPLIT_FOLDERS), root_split)
              for d in unique]
    rest = [tuple(p for p in d if p.lower() not in _SPLIT_FOLDERS) for d in unique]
    while rest and all(len(r) >= 2 for r in rest) and len({r[0] for r in rest}) == 1:
        rest = [r[1:] for r in rest]
    label = {d: (r[0] if r else root.name, sp) for d, r, sp in zip(unique, rest, splits)}
    return [label[d][0] for d in dirs], [label[d][1] for d in dirs]


def _scan_folder(root: Path) -> list[_File]:
    """Every image file under ``root``, sorted by relative path (plain strings: this runs on every load)."""
    found: list[tuple[tuple[str, ...], str, int, int]] = []  # (relative parts, path, size, mtime_ns)
    pending: list[tuple[str, tuple[str, ...]]] = [(str(root), ())]
    while pending:
        dirpath, parts = pending.pop()
        with os.scandir(dirpath) as entries:
            for e in entries:
                if _hidden(e.name):
                    continue
                if e.is_dir(follow_symlinks=False):
                    pending.append((e.path, parts + (e.name,)))
                elif e.is_file() and _looks_like_image(e.name, e.path):
                    st = e.stat()
                    found.append((parts + (e.name,), e.path, st.st_size, st.st_mtime_ns))
    found.sort()
    classes, splits = _folder_labels([parts[:-1] for parts, *_ in found], root)
    return [_File(path, "/".join(parts), cls, split, size, mtime)
            for (parts, path, size, mtime), cls, split in zip(found, classes, splits)]


def _folder_root(path: str) -> Path:
    root = project_path(path)
    if not root.exists():
        raise DataError(f"data source {path!r} is not an existing folder; valid forms: {SOURCE_FORMS}")
    if not root.is_dir():
        raise DataError(f"data source {path!r} is a file, not a folder of images")
    return root.resolve()


@dataclass
class _FileResult:
    md5: str
    image: np.ndarray | None
    reason: str = ""
    size: str = ""
    depth: str = ""


def _process_file(path: Path, image_size: int, crop: str) -> _FileResult:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return _FileResult("", None, f"cannot read file ({exc.strerror or exc})")
    md5 = hashlib.md5(data).hexdigest()
    try:
        decoded = _decode_file(path, data)
    except _Undecodable as exc:
        return _FileResult(md5, None, str(exc))
    return _FileResult(md5, _to_square_uint8(decoded.pixels, image_size, crop), "", decoded.size, decoded.depth)


def _build_folder(root: Path, files: list[_File], class_names: list[str], image_size: int, crop: str,
                  progress: bool, report: DataReport) -> _Items:
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(tqdm(pool.map(lambda f: _process_file(Path(f.path), image_size, crop), files),
                            total=len(files), desc=f"decoding {root.name}", unit="img",
                            disable=not progress))
    ok = [(f, r) for f, r in zip(files, results) if r.image is not None]
    report.files_found = len(files)
    report.decoded = len(ok)
    report.skipped = [(f.rel, r.reason) for f, r in zip(files, results) if r.image is None]
    report.original_sizes = dict(Counter(r.size for _, r in ok))
    report.bit_depths = dict(Counter(r.depth for _, r in ok))
    if not ok:
        first_rel, first_reason = report.skipped[0]
        raise DataError(f"none of the {len(files)} image files under {root} could be decoded "
                        f"(e.g. {first_rel}: {first_reason})")
    index = {c: i for i, c in enumerate(class_names)}
    return _Items(
        images=np.stack([r.image for _, r in ok]),
        labels=np.array([index[f.cls] for f, _ in ok], dtype=np.int64),
        class_names=class_names, ids=[f.rel for f, _ in ok], md5s=[r.md5 for _, r in ok],
        groups=[patient_id_from_name(f.rel) for f, _ in ok], splits=[f.split for f, _ in ok],
    )

