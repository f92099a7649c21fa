"""Folder sources: layout discovery (classes, split folders), file selection, decoding in threads."""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import DataError
from ..paths import project_path
from ..splits import patient_id_from_name
from .dataset import _Items
from .decode import IMAGE_SUFFIXES, _decode_file, _Undecodable, bit_scale
from .preprocess import _round_uint8, _to_square
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


# reasons a file under the root is not read, as shown in the report (counts by reason)
IGNORED_MACOS = "macOS metadata (__MACOSX folder or ._ AppleDouble file)"
IGNORED_HIDDEN = "hidden file or folder (name starts with '.')"
IGNORED_NOT_IMAGE = "not an image (no image suffix and no DICOM marker)"
IGNORED_DUPLICATE_TREE = "inside a nested duplicate copy of the tree"


def _ignored_name(name: str) -> str | None:
    """The reason a file or folder name is never read, or None."""
    if name == "__MACOSX" or name.startswith("._"):
        return IGNORED_MACOS
    if name.startswith("."):
        return IGNORED_HIDDEN
    return None


def _has_dicom_marker(path: str) -> bool:
    """True when bytes 128..131 are ``DICM`` (the DICOM Part 10 preamble and prefix, PS3.10 7.1)."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _looks_like_image(name: str, path: str) -> bool:
    """By suffix, or else by the DICOM ``DICM`` marker (PACS exports are often named by UID, e.g.
    ``1.2.840.113619.2.55.3.1234.5678``: dots, but no suffix)."""
    if name.lower().endswith(IMAGE_SUFFIXES):
        return True
    return _has_dicom_marker(path)


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


def _nested_copies(found: list[tuple[tuple[str, ...], str, int, int]]) -> list[tuple[str, ...]]:
    """Folders that repeat their parent's tree: every file ``P/D/r`` has a twin ``P/r`` of the same size.

    The Kaggle chest-xray-pneumonia archive ships ``chest_xray/{train,test,val}`` and again
    ``chest_xray/chest_xray/{train,test,val}``; labelling both would give a class "chest_xray" and
    MD5 de-duplication would then empty the real classes. Outermost copies are found first; a copy
    inside a copy is covered by the outer one. Cost: one set lookup per file and folder level.
    """
    below: dict[tuple[str, ...], set[tuple[tuple[str, ...], int]]] = defaultdict(set)
    for parts, _, size, _ in found:
        for k in range(len(parts)):
            below[parts[:k]].add((parts[k:], size))
    copies: list[tuple[str, ...]] = []
    for folder in sorted((d for d in below if d), key=len):
        if any(folder[:len(c)] == c for c in copies):
            continue
        parent = below[folder[:-1]]
        if all((rel, size) in parent and rel[:1] != folder[-1:] for rel, size in below[folder]):
            copies.append(folder)
    return copies


@dataclass
class _Scan:
    files: list[_File]
    ignored: dict[str, int]
    duplicate_trees: list[str]  # "copy = original", relative to the root


def _scan_folder(root: Path) -> _Scan:
    """Every image file under ``root``, sorted by relative path (plain strings: this runs on every load),
    with the files left out counted by reason and nested duplicate trees named."""
    found: list[tuple[tuple[str, ...], str, int, int]] = []  # (relative parts, path, size, mtime_ns)
    ignored: Counter[str] = Counter()
    pending: list[tuple[str, tuple[str, ...], str | None]] = [(str(root), (), None)]
    while pending:
        dirpath, parts, why = pending.pop()
        with os.scandir(dirpath) as entries:
            for e in entries:
                reason = why or _ignored_name(e.name)
                if e.is_dir(follow_symlinks=False):
                    pending.append((e.path, parts + (e.name,), reason))
                elif not e.is_file():
                    continue
                elif reason:
                    ignored[reason] += 1
                elif _looks_like_image(e.name, e.path):
                    st = e.stat()
                    found.append((parts + (e.name,), e.path, st.st_size, st.st_mtime_ns))
                else:
                    ignored[IGNORED_NOT_IMAGE] += 1
    found.sort()
    copies = _nested_copies(found)
    if copies:
        inside = [f for f in found if any(f[0][:len(c)] == c for c in copies)]
        ignored[IGNORED_DUPLICATE_TREE] += len(inside)
        found = [f for f in found if not any(f[0][:len(c)] == c for c in copies)]
    classes, splits = _folder_labels([parts[:-1] for parts, *_ in found], root)
    files = [_File(path, "/".join(parts), cls, split, size, mtime)
             for (parts, path, size, mtime), cls, split in zip(found, classes, splits)]
    trees = [f"{'/'.join(c)} = {'/'.join(c[:-1]) or '.'}" for c in copies]
    return _Scan(files, dict(sorted(ignored.items())), trees)


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
    image: np.ndarray | None  # float (S, S) after crop and resize, in stored units (see _Decoded)
    reason: str = ""
    size: str = ""
    depth: str = ""
    bits: int | None = None
    container: int | None = None
    notes: tuple[str, ...] = ()


def _process_file(path: Path, image_size: int, crop: str, keep_constant: bool = False) -> _FileResult:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return _FileResult("", None, f"cannot read file ({exc.strerror or exc})")
    md5 = hashlib.md5(data).hexdigest()
    try:
        decoded = _decode_file(path, data)
    except _Undecodable as exc:
        return _FileResult(md5, None, str(exc))
    if not keep_constant and decoded.pixels.size and decoded.pixels.min() == decoded.pixels.max():
        return _FileResult(md5, None, f"constant image (every pixel is {decoded.pixels.flat[0]:g}): left out")
    return _FileResult(md5, _to_square(decoded.pixels, image_size, crop), "", decoded.size, decoded.depth,
                       decoded.bits, decoded.container, decoded.notes)


def _build_folder(root: Path, files: list[_File], class_names: list[str], image_size: int, crop: str,
                  progress: bool, report: DataReport, bit_scaling: str = "per-image",
                  keep_constant: bool = False) -> _Items:
    with ThreadPoolExecutor(max_workers=2) as pool:
        work = pool.map(lambda f: _process_file(Path(f.path), image_size, crop, keep_constant), files)
        results = list(tqdm(work, total=len(files), desc=f"decoding {root.name}", unit="img",
                            disable=not progress))
    ok = [(f, r) for f, r in zip(files, results) if r.image is not None]
    report.files_found = len(files)
    report.decoded = len(ok)
    report.skipped = [(f.rel, r.reason) for f, r in zip(files, results) if r.image is None]
    report.original_sizes = dict(Counter(r.size for _, r in ok))
    report.bit_depths = dict(Counter(r.depth for _, r in ok))
    report.notes = dict(Counter(n for _, r in ok for n in r.notes))
    if not ok:
        first_rel, first_reason = report.skipped[0]
        raise DataError(f"none of the {len(files)} image files under {root} could be decoded "
                        f"(e.g. {first_rel}: {first_reason})")
    wide = [r.bits for _, r in ok if r.container is not None]
    dataset_bits = max(wide) if wide else None
    if wide:
        divisor = {"per-image": "2^(bits each image uses) - 1", "fixed": "2^(bits of the file type) - 1",
                   "dataset": f"2^{dataset_bits} - 1 (most bits used in this data set)"}[bit_scaling]
        report.bit_scaling = f"{bit_scaling}: {len(wide)} image(s) above 8 bits divided by {divisor}"
    else:
        report.bit_scaling = f"{bit_scaling}: no image above 8 bits"
    images = np.stack([_round_uint8(r.image * bit_scale(r.bits, r.container, bit_scaling, dataset_bits))
                       for _, r in ok])
    index = {c: i for i, c in enumerate(class_names)}
    return _Items(
        images=images,
        labels=np.array([index[f.cls] for f, _ in ok], dtype=np.int64),
        class_names=class_names, ids=[f.rel for f, _ in ok], md5s=[r.md5 for _, r in ok],
        groups=[patient_id_from_name(f.rel) for f, _ in ok], splits=[f.split for f, _ in ok],
    )

