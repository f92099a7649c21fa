"""Every data source behind one call, ``load(source, ...)``, returning a clean, cached tensor dataset.

Source strings (the same in Python, on the CLI and as a papermill parameter):

- a folder path: images found recursively (PNG, JPEG, BMP, TIFF incl. 16-bit, DICOM ``.dcm``/``.dicom``
  and extension-less files with the DICOM ``DICM`` marker); hidden files/folders and ``__MACOSX`` are ignored;
- ``medmnist:<flag>`` or ``medmnist:<flag>:<train|val|test>`` (all three splits combined by default);
- ``phantom`` (2,000 images) or ``phantom:<N>``: the embedded synthetic chest-radiograph generator.
  ``phantom`` always means the generator; write ``./phantom`` for a folder of that name.

Folder labels. For each image take the folders between the root and the file, drop split folders
(``train``/``training``, ``val``/``valid``/``validation``, ``test``/``testing``; the split is recorded),
then drop leading folders that every image shares as long as each image keeps at least one folder.
The class is the first folder left; images with none left take the root folder's name. So
``root/Cancer/x.png`` -> ``Cancer``, ``chest_xray/train/NORMAL/x.jpeg`` -> ``NORMAL``,
``root/Cancer/patient7/x.png`` -> ``Cancer`` and a flat folder is one class named after it.
``class_names`` are sorted, or follow ``classes=`` when given (which also selects those classes).

Preprocessing, in this order, each a recorded option: decode to floating point (8-bit kept, higher
bit depths scaled by the bits actually used, DICOM through its modality LUT then its VOI LUT or
window, MONOCHROME1 inverted, colour and alpha to grayscale), ``crop="center"`` square crop (or
``"none"``: resize directly), bilinear antialiased resize, rounding to 8 bits, optional histogram
equalisation, then ``channels`` copies scaled to ``[-1, 1]``. Exact duplicates (MD5 of the original
file bytes, or of the raw array for medmnist/phantom) are reported and, with ``dedup=True``, only the
first (by sorted path) is kept. The result is cached as 8-bit images under ``cache_dir/<key>.pt``,
keyed on the source, its files (path, size, mtime) and the options that change pixels.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from .errors import DataError
from .paths import project_path

FORMAT_VERSION = 1
DEFAULT_PHANTOM_N = 2000
MEDMNIST_ROOT = "data/medmnist"
SUPPORTED_SIZES: dict[str, Sequence[int]] = {
    "medmnist": (28, 64, 128, 224),
    "folder": range(32, 1025),
    "phantom": range(64, 257),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
SOURCE_FORMS = "a folder path, medmnist:<flag>[:train|val|test], phantom or phantom:<N>"
MEDMNIST_SPLITS = ("train", "val", "test")
_SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "test": "test", "testing": "test"}
_DICOM_SUFFIXES = (".dcm", ".dicom")
_GROUP_PATTERNS = (
    re.compile(r"^(person\d+)_"),                  # Kermany pneumonia: person1_bacteria_1
    re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+$"),      # Kermany normal: IM-0115-0001, NORMAL2-IM-1427-0001
    re.compile(r"^(\d{8})_\d{3}$"),                # NIH ChestX-ray14: 00001308_000
)


# ----------------------------------------------------------------------------------------------
# tensors


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint8 [0, 255] (values outside the range are clipped)."""
    return ((x.detach().float().clamp(-1, 1) * 0.5 + 0.5) * 255).round().to(torch.uint8)


def _from_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255 - 0.5) / 0.5


_FROM_UINT8_TABLE = _from_uint8(torch.arange(256, dtype=torch.uint8)).numpy()


def from_uint8(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1], the project's image convention: ``(u / 255 - 0.5) / 0.5``."""
    if x.dtype == torch.uint8 and x.device.type == "cpu":
        # a 256-entry table lookup gives the same values in one pass (5x faster on a cached load)
        return torch.from_numpy(np.take(_FROM_UINT8_TABLE, x.numpy()))
    return _from_uint8(x)


# ----------------------------------------------------------------------------------------------
# report and dataset


@dataclass
class DataReport:
    """What a load found and did; shown by the notebook and written by ``data-report``."""

    source: str
    files_found: int = 0
    decoded: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    duplicate_groups: list[list[str]] = field(default_factory=list)
    duplicates_removed: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)
    original_sizes: dict[str, int] = field(default_factory=dict)
    bit_depths: dict[str, int] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    from_cache: bool = False

    @property
    def n_images(self) -> int:
        return sum(self.class_counts.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "files_found": self.files_found,
            "decoded": self.decoded,
            "skipped": [list(s) for s in self.skipped],
            "duplicate_groups": [list(g) for g in self.duplicate_groups],
            "duplicates_removed": self.duplicates_removed,
            "class_counts": dict(self.class_counts),
            "original_sizes": dict(self.original_sizes),
            "bit_depths": dict(self.bit_depths),
            "options": dict(self.options),
            "from_cache": self.from_cache,
            "images": self.n_images,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataReport:
        kwargs = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        kwargs["skipped"] = [tuple(s) for s in d.get("skipped", [])]
        return cls(**kwargs)

    def format(self, max_rows: int = 10) -> str:
        """A plain-text report: counts, classes, sizes, bit depths, skipped files, duplicates, options."""
        title = f"data report: {self.source}" + ("  (from cache)" if self.from_cache else "")
        parts = [title, "=" * len(title)]
        parts += _table(["files", "count"], [
            ("found", self.files_found), ("decoded", self.decoded), ("skipped", len(self.skipped)),
            ("duplicates removed", self.duplicates_removed), ("images kept", self.n_images)])
        total = max(self.n_images, 1)
        parts += [""] + _table(["class", "count", "share"], [
            (name, n, f"{100 * n / total:.1f}%") for name, n in self.class_counts.items()])
        for title_, counts in (("original size", self.original_sizes), ("bit depth", self.bit_depths)):
            rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            parts += [""] + _table([title_, "count"], rows[:max_rows])
            if len(rows) > max_rows:
                parts.append(f"... and {len(rows) - max_rows} more")
        if self.skipped:
            parts += ["", f"skipped files ({len(self.skipped)}):"]
            parts += [f"  {path}: {reason}" for path, reason in self.skipped[:max_rows]]
            if len(self.skipped) > max_rows:
                parts.append(f"  ... and {len(self.skipped) - max_rows} more")
        if self.duplicate_groups:
            action = "first kept" if self.duplicates_removed else "all kept (dedup off)"
            parts += ["", f"duplicate groups ({len(self.duplicate_groups)}, {action}):"]
            parts += ["  " + " = ".join(g) for g in self.duplicate_groups[:max_rows]]
            if len(self.duplicate_groups) > max_rows:
                parts.append(f"  ... and {len(self.duplicate_groups) - max_rows} more")
        opts = " ".join(f"{k}={v}" for k, v in self.options.items())
        parts += ["", f"options: {opts}"]
        return "\n".join(parts)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                              for i, (c, w) in enumerate(zip(r, widths)))
    return [fmt(cells[0]), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells[1:]]


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


# ----------------------------------------------------------------------------------------------
# source strings


def parse_source(source: str) -> tuple[str, str | int | None]:
    """``("folder", path)``, ``("medmnist", "flag" or "flag:split")`` or ``("phantom", N)``."""
    if not isinstance(source, str) or not source.strip():
        raise DataError(f"empty data source; valid forms: {SOURCE_FORMS}")
    s = source.strip()
    if s == "phantom" or s.startswith("phantom:"):
        n = s.partition(":")[2] or str(DEFAULT_PHANTOM_N)
        if not n.isdigit() or int(n) < 1:
            raise DataError(f"phantom:N needs a positive image count, got {source!r}")
        return "phantom", int(n)
    if s.startswith("medmnist:"):
        flag, _, split = s[len("medmnist:"):].partition(":")
        _medmnist_info(flag)
        if split and split not in MEDMNIST_SPLITS:
            raise DataError(f"unknown medmnist split {split!r} in {source!r}; "
                            f"choose {', '.join(MEDMNIST_SPLITS)} or leave it out for all")
        return "medmnist", f"{flag}:{split}" if split else flag
    scheme = re.match(r"^([A-Za-z][\w+.-]+):", s)
    if scheme and not Path(s).exists():
        raise DataError(f"unknown data source scheme {scheme.group(1)!r} in {source!r}; "
                        f"valid forms: {SOURCE_FORMS}")
    return "folder", s


def _check_size(kind: str, image_size: int) -> None:
    sizes = SUPPORTED_SIZES[kind]
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size not in sizes:
        allowed = (f"{sizes.start}..{sizes.stop - 1}" if isinstance(sizes, range)
                   else ", ".join(map(str, sizes)))
        raise DataError(f"image_size {image_size!r} is not supported for {kind} sources; use {allowed}")


def _check_options(channels: int, crop: str) -> None:
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    if crop not in ("center", "none"):
        raise DataError(f"crop must be 'center' or 'none', got {crop!r}")


def _class_list(classes: Sequence[str] | str | None) -> list[str] | None:
    if classes is None:
        return None
    names = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else list(classes)
    names = [c for c in names if c]
    if not names:
        return None
    if len(set(names)) != len(names):
        raise DataError(f"classes lists a class twice: {names}")
    return names


def _pick_classes(found: Sequence[str], wanted: list[str] | None) -> list[str]:
    """The class names of the dataset, in label order; unknown wanted names are an error."""
    if wanted is None:
        return sorted(set(found))
    unknown = [c for c in wanted if c not in set(found)]
    if unknown:
        raise DataError(f"unknown class name(s) {unknown}; found classes: {', '.join(sorted(set(found)))}")
    return wanted


# ----------------------------------------------------------------------------------------------
# decoding single files


class _Undecodable(Exception):
    """A file that cannot become an image; the message is the reason shown in the report."""


@dataclass
class _Decoded:
    pixels: np.ndarray  # float (H, W) in [0, 255]
    size: str  # original "WxH"
    depth: str  # bit depth, e.g. "8", "16", "16 (12 used)"


def _one_line(exc: BaseException) -> str:
    """The exception as one short line, without object addresses (reports must be reproducible)."""
    text = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", " ".join(str(exc).split())) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _is_dicom(path: Path, head: bytes) -> bool:
    return path.suffix.lower() in _DICOM_SUFFIXES or head[128:132] == b"DICM"


def _decode_file(path: Path, data: bytes) -> _Decoded:
    """Decode one file's bytes to a float grayscale image in [0, 255]; raise _Undecodable with a reason."""
    try:
        return _decode_dicom(data) if _is_dicom(path, data) else _decode_pil(data)
    except _Undecodable:
        raise
    except Exception as exc:  # any decoder failure is a skipped file, never a crash
        raise _Undecodable(f"cannot decode ({_one_line(exc)})") from None


def _scale_by_bits(arr: np.ndarray, container: int) -> tuple[np.ndarray, str]:
    """Scale integer pixels by the bits they use (a 12-bit image in a 16-bit file is 12-bit)."""
    arr = arr.astype(np.float64)
    if arr.min() < 0:
        return _minmax(arr), f"{container} (signed)"
    bits = max(8, int(arr.max()).bit_length())
    depth = str(container) if bits == container else f"{container} ({bits} used)"
    return arr * (255.0 / (2**bits - 1)), depth


def _minmax(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr, dtype=np.float64)


def _decode_pil(data: bytes) -> _Decoded:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            size = f"{im.width}x{im.height}"
            if im.mode.startswith("I;16"):
                pixels, depth = _scale_by_bits(np.asarray(im), 16)
            elif im.mode == "I":
                pixels, depth = _scale_by_bits(np.asarray(im), 32)
            elif im.mode == "F":
                pixels, depth = _minmax(np.asarray(im, dtype=np.float64)), "32 (float)"
            else:
                pixels, depth = np.asarray(im.convert("L"), dtype=np.float64), "1" if im.mode == "1" else "8"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _Undecodable(f"not a readable image ({_one_line(exc)})") from None
    return _Decoded(pixels, size, depth)


def _dicom_encoding_check(ds: Any) -> str:
    """The transfer syntax name; raise _Undecodable when no installed decoder can read it."""
    from pydicom.pixels import get_decoder

    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts is None:
        return "unknown encoding"
    try:
        compressed = ts.is_compressed
    except ValueError:
        raise _Undecodable(f"unsupported DICOM encoding {ts} (not a known transfer syntax)") from None
    if compressed:
        try:
            decoder = get_decoder(ts)
        except NotImplementedError:
            raise _Undecodable(f"unsupported DICOM encoding {ts.name} ({ts}): pydicom cannot decode it") from None
        if not decoder.is_available:
            needs = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
            raise _Undecodable(f"unsupported DICOM encoding {ts.name} ({ts}): no decoder installed, needs {needs}")
    return ts.name


def _decode_dicom(data: bytes) -> _Decoded:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise _Undecodable(f"not a readable DICOM file ({_one_line(exc)})") from None
    if "PixelData" not in ds:
        raise _Undecodable("DICOM file has no pixel data")
    encoding = _dicom_encoding_check(ds)
    try:
        raw = ds.pixel_array
    except Exception as exc:
        raise _Undecodable(f"cannot decode DICOM pixel data ({encoding}): {_one_line(exc)}") from None
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raw = raw[0]
    size = f"{raw.shape[1]}x{raw.shape[0]}"
    if raw.ndim == 3:  # colour: pydicom returns RGB
        return _Decoded(raw[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114]), size,
                        f"{ds.get('BitsStored', 8)} (RGB)")
    values = apply_modality_lut(raw, ds)
    if ds.get("VOILUTSequence") or ("WindowCenter" in ds and "WindowWidth" in ds):
        values = apply_voi_lut(values, ds)
        lo, hi = _voi_output_range(ds)
        pixels = np.clip((np.asarray(values, dtype=np.float64) - lo) * (255.0 / (hi - lo)), 0, 255)
    else:  # no display window given: stretch the stored range
        pixels = _minmax(np.asarray(values, dtype=np.float64))
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        pixels = 255.0 - pixels
    return _Decoded(pixels, size, str(ds.get("BitsStored", raw.dtype.itemsize * 8)))


def _voi_output_range(ds: Any) -> tuple[float, float]:
    """The range the VOI LUT or window maps onto, so that it becomes black..white."""
    from pydicom.pixels import apply_voi_lut

    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None:
        return 0.0, float(2 ** int(seq[0].LUTDescriptor[2]) - 1)
    with np.errstate(over="ignore"):
        lo, hi = apply_voi_lut(np.array([-1e30, 1e30]), ds)
    return float(lo), (float(hi) if hi > lo else float(lo) + 1.0)


# ----------------------------------------------------------------------------------------------
# preprocessing


def _center_crop(pixels: np.ndarray) -> np.ndarray:
    h, w = pixels.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return pixels[top:top + side, left:left + side]


def _to_square_uint8(pixels: np.ndarray, size: int, crop: str) -> np.ndarray:
    """Crop, resize in floating point (bilinear, antialiased when shrinking), then round to 8 bits."""
    if crop == "center":
        pixels = _center_crop(pixels)
    if pixels.shape != (size, size):
        img = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32))
        pixels = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _equalize(images: np.ndarray) -> np.ndarray:
    """Histogram-equalise each 8-bit image: grey level -> its rank (CDF), stretched to 0..255.

    Pillow's ``ImageOps.equalize`` rounds its step to an integer, which saturates small images.
    """
    out = images.copy()
    for img in out:
        hist = np.bincount(img.ravel(), minlength=256)
        cdf = np.cumsum(hist)
        lowest = cdf[np.flatnonzero(hist)[0]]
        if cdf[-1] > lowest:  # a constant image stays as it is
            lut = np.rint((cdf - lowest) * (255.0 / (cdf[-1] - lowest))).clip(0, 255).astype(np.uint8)
            img[...] = lut[img]
    return out


def _group_of(item_id: str) -> str:
    stem = PurePosixPath(item_id).stem
    for pattern in _GROUP_PATTERNS:
        m = pattern.match(stem)
        if m:
            return m.group(1)
    return item_id


# ----------------------------------------------------------------------------------------------
# the three sources -> "_Items" (8-bit images at the final size, before class selection/dedup)


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
        groups=[_group_of(f.rel) for f, _ in ok], splits=[f.split for f, _ in ok],
    )


def _medmnist_info(flag: str) -> dict[str, Any]:
    import medmnist

    if flag not in medmnist.INFO:
        flags = sorted(k for k in medmnist.INFO if not k.endswith("3d"))
        raise DataError(f"unknown medmnist flag {flag!r}; 2-D flags: {', '.join(flags)}")
    info = medmnist.INFO[flag]
    cls = getattr(medmnist, info["python_class"])
    if not issubclass(cls, medmnist.dataset.MedMNIST2D):
        raise DataError(f"medmnist flag {flag!r} is 3-D; only 2-D images are supported")
    if info["task"].startswith("multi-label"):
        raise DataError(f"medmnist flag {flag!r} is multi-label; only single-label flags are supported")
    return info


def _medmnist_npz(flag: str, image_size: int) -> Path:
    suffix = "" if image_size == 28 else f"_{image_size}"
    return project_path(MEDMNIST_ROOT) / f"{flag}{suffix}.npz"


def _medmnist_dataset(flag: str, split: str, image_size: int, download: bool) -> Any:
    import medmnist

    npz = _medmnist_npz(flag, image_size)
    cls = getattr(medmnist, medmnist.INFO[flag]["python_class"])
    return cls(split=split, root=str(npz.parent), size=image_size, download=download)


def _ensure_medmnist(flag: str, image_size: int) -> Path:
    """The npz path, downloading it through medmnist only when it is absent."""
    npz = _medmnist_npz(flag, image_size)
    if npz.exists():
        return npz
    npz.parent.mkdir(parents=True, exist_ok=True)
    try:
        _medmnist_dataset(flag, "train", image_size, download=True)
    except Exception:
        npz.unlink(missing_ok=True)
        suffix = "" if image_size == 28 else f"_{image_size}"
        url = _medmnist_info(flag).get(f"url{suffix}", "the MedMNIST Zenodo record")
        raise DataError(f"{npz.name} is not in {npz.parent} and could not be downloaded (offline?); "
                        f"download it from {url} and place it in that folder") from None
    return npz


def _build_medmnist(flag: str, split: str, image_size: int, report: DataReport) -> _Items:
    info = _medmnist_info(flag)
    npz = _medmnist_npz(flag, image_size)
    images, labels, ids, splits = [], [], [], []
    for s in [split] if split else list(MEDMNIST_SPLITS):
        try:
            d = _medmnist_dataset(flag, s, image_size, download=False)
            imgs, labs = np.asarray(d.imgs), np.asarray(d.labels).reshape(-1)
        except Exception as exc:
            raise DataError(f"cannot read {npz}: {_one_line(exc)}") from None
        if imgs.ndim == 4:  # RGB flags -> grayscale with the usual luma weights
            imgs = np.rint(imgs[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114]))
        if imgs.shape[1:] != (image_size, image_size) or len(labs) != len(imgs):
            raise DataError(f"{npz.name} {s} split has images {imgs.shape} and {len(labs)} labels; "
                            f"expected N x {image_size} x {image_size} with one label each")
        images.append(imgs.astype(np.uint8))
        labels.append(labs.astype(np.int64))
        ids += [f"medmnist/{s}/{i}" for i in range(len(imgs))]
        splits += [s] * len(imgs)
    stack = np.concatenate(images)
    names = [info["label"][k] for k in sorted(info["label"], key=int)]
    report.original_sizes = {f"{image_size}x{image_size}": len(stack)}
    report.bit_depths = {"8": len(stack)}
    return _Items(stack, np.concatenate(labels), names, ids,
                  [hashlib.md5(im.tobytes()).hexdigest() for im in stack], list(ids), splits)


def _build_phantom(n: int, image_size: int, seed: int, progress: bool, report: DataReport) -> _Items:
    from . import phantom

    ps = phantom.generate(n, size=image_size, seed=seed, progress=progress)
    images = np.ascontiguousarray(ps.images, dtype=np.uint8)
    ids = [f"phantom/{i:06d}" for i in range(len(images))]
    report.original_sizes = {f"{image_size}x{image_size}": len(images)}
    report.bit_depths = {"8": len(images)}
    return _Items(images, np.asarray(ps.labels, dtype=np.int64), list(ps.class_names), ids,
                  [hashlib.md5(im.tobytes()).hexdigest() for im in images], list(ids), [""] * len(ids))


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


# ----------------------------------------------------------------------------------------------
# cache


def _cache_key(material: dict[str, Any]) -> str:
    blob = json.dumps(dict(material, format=FORMAT_VERSION), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _read_cache(path: Path, key: str) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        meta = json.loads(blob["meta"])
        n = len(meta["ids"])
        if blob.get("key") != key or blob["images"].dtype != torch.uint8 or blob["images"].shape[0] != n \
                or blob["labels"].shape[0] != n or not (len(meta["md5s"]) == len(meta["groups"]) == n):
            raise ValueError("contents do not match the cache key")
        DataReport.from_dict(meta["report"])
        return blob
    except Exception as exc:
        warnings.warn(f"ignoring unreadable cache file {path} ({_one_line(exc)}); rebuilding it", stacklevel=3)
        return None


def _write_cache(path: Path, blob: dict[str, Any]) -> None:
    """Write atomically (temp file + rename) so a crash never leaves a half-written cache file."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(blob, f)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        warnings.warn(f"could not write cache file {path} ({_one_line(exc)}); continuing without it",
                      stacklevel=3)


# ----------------------------------------------------------------------------------------------
# load


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
        from . import phantom

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


# ----------------------------------------------------------------------------------------------
# data-report (CLI)


def write_report(ds: CXRDataset, out_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.txt, montage.png and histograms.png into ``out_dir``."""
    from . import plots

    out = project_path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create report folder {out} ({_one_line(exc)})") from None
    paths = {name: out / name for name in ("report.json", "report.txt", "montage.png", "histograms.png")}
    paths["report.json"].write_text(json.dumps(ds.report.to_dict(), indent=2) + "\n")
    paths["report.txt"].write_text(ds.report.format() + "\n")
    plots.montage_by_class(ds, path=paths["montage.png"])
    plots.intensity_histograms(ds, path=paths["histograms.png"])
    return paths


def cli_add_arguments(parser: Any) -> None:
    parser.add_argument("source", help=f"data source: {SOURCE_FORMS}")
    parser.add_argument("--out", default="results/data-report", help="output folder (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=64, help="side of the square images (default: 64)")
    parser.add_argument("--classes", default=None, help="comma-separated class names to keep, in label order")
    parser.add_argument("--crop", default="center", choices=("center", "none"),
                        help="center: square centre crop before resizing; none: resize directly")
    parser.add_argument("--equalize", action="store_true", help="histogram-equalise each image")
    parser.add_argument("--no-dedup", dest="dedup", action="store_false", help="keep exact duplicates")
    parser.add_argument("--no-cache", dest="cache", action="store_false", help="neither read nor write the cache")
    parser.add_argument("--cache-dir", default="data/cache", help="cache folder (default: %(default)s)")


def cli_run(args: Any) -> int:
    ds = load(args.source, image_size=args.image_size, classes=args.classes, crop=args.crop,
              equalize=args.equalize, dedup=args.dedup, cache=args.cache, cache_dir=args.cache_dir)
    paths = write_report(ds, args.out)
    print(ds.report.format())
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}")
    return 0
