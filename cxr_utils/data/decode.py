"""Decoding one file's bytes to a float grayscale image in [0, 255]: PNG/JPEG/BMP/TIFF through Pillow,
DICOM through pydicom (modality LUT, VOI LUT or window, MONOCHROME1 inversion).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .report import _one_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
_DICOM_SUFFIXES = (".dcm", ".dicom")


class _Undecodable(Exception):
    """A file that cannot become an image; the message is the reason shown in the report."""


@dataclass
class _Decoded:
    pixels: np.ndarray  # float (H, W) in [0, 255]
    size: str  # original "WxH"
    depth: str  # bit depth, e.g. "8", "16", "16 (12 used)"




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


