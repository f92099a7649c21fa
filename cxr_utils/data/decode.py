"""Decoding one file's bytes to a float grayscale image in [0, 255]: PNG/JPEG/BMP/TIFF through Pillow,
DICOM through pydicom (modality LUT, VOI LUT or window, MONOCHROME1 inversion).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from .report import _one_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
_DICOM_SUFFIXES = (".dcm", ".dicom")


class _Undecodable(Exception):
    """A file that cannot become an image; the message is the reason shown in the report."""


@dataclass
class _Decoded:
    """A decoded image. ``pixels`` are in [0, 255] when ``container`` is None; otherwise they are the
    stored integers of a more-than-8-bit image (0 .. 2**container - 1, ``bits`` of them used), which
    the load scales to 8 bits by its ``bit_scaling`` rule after resizing (scaling is linear, so it
    commutes with the crop and the resize)."""

    pixels: np.ndarray  # float (H, W)
    size: str  # original "WxH"
    depth: str  # bit depth, e.g. "8", "16", "16 (12 used)"
    bits: int | None = None  # bits used by the largest value (>= 8), for integer images above 8 bits
    container: int | None = None  # bits of the file's sample type (16 for a 16-bit PNG)
    notes: tuple[str, ...] = ()  # what was done on the way, e.g. "EXIF orientation 6", "alpha on black"




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


def _bits_used(arr: np.ndarray, container: int) -> tuple[int, str]:
    """Bits the largest value needs (at least 8) and the depth label: a 12-bit image in a 16-bit file
    is ``"16 (12 used)"``."""
    bits = max(8, int(arr.max()).bit_length())
    return bits, str(container) if bits == container else f"{container} ({bits} used)"


def bit_scale(bits: int | None, container: int | None, rule: str, dataset_bits: int | None = None) -> float:
    """The factor that maps stored integers to 8-bit grey levels [0, 255].

    ``rule``: ``"per-image"`` divides by ``2**bits - 1`` (the image's own bits used, so a dim 16-bit
    exposure is stretched), ``"dataset"`` by ``2**dataset_bits - 1`` (the most bits used by any image
    of the load, relative brightness kept), ``"fixed"`` by ``2**container - 1`` (the file's sample
    type, e.g. 65535 for 16-bit). 8-bit and already scaled images (``container`` None) get 1.
    """
    if container is None or bits is None:
        return 1.0
    n = {"per-image": bits, "dataset": dataset_bits or bits, "fixed": container}[rule]
    return 255.0 / (2**n - 1)


def _minmax(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr, dtype=np.float64)


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def _decode_pil(data: bytes) -> _Decoded:
    """PNG/JPEG/BMP/TIFF through Pillow: EXIF orientation applied (``ImageOps.exif_transpose``), colour to
    luma (ITU-R 601), transparency composited on black, integers above 8 bits left for ``bit_scale``."""
    notes: list[str] = []
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            orientation = opened.getexif().get(0x0112, 1)  # EXIF Orientation (1 = upright)
            im = ImageOps.exif_transpose(opened)
            if orientation not in (None, 1):
                notes.append(f"EXIF orientation {orientation} applied")
            size = f"{im.width}x{im.height}"
            if im.mode.startswith("I;16") or im.mode == "I":
                arr = np.asarray(im).astype(np.float64)
                container = 16 if im.mode.startswith("I;16") or (opened.format == "PNG") else 32
                if arr.min() < 0:
                    return _Decoded(_minmax(arr), size, f"{container} (signed)")
                bits, depth = _bits_used(arr, container)
                return _Decoded(arr, size, depth, bits, container)
            if im.mode == "F":
                return _Decoded(_minmax(np.asarray(im, dtype=np.float64)), size, "32 (float)")
            depth = "1" if im.mode == "1" else "8"
            if _has_alpha(im):
                # a radiograph has no "behind": transparent pixels carry no measurement, so they are
                # black (no signal), whatever colour the file stores under them
                rgba = im.convert("RGBA")
                gray = np.asarray(rgba.convert("RGB").convert("L"), dtype=np.float64)
                alpha = np.asarray(rgba.getchannel("A"), dtype=np.float64) / 255.0
                notes.append("transparency composited on black")
                return _Decoded(gray * alpha, size, depth, notes=tuple(notes))
            return _Decoded(np.asarray(im.convert("L"), dtype=np.float64), size, depth, notes=tuple(notes))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _Undecodable(f"not a readable image ({_one_line(exc)})") from None


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


def _tag_value(ds: Any, keyword: str) -> Any:
    """The element's value, or None when absent or empty (a present-but-empty element is absent)."""
    if keyword not in ds:
        return None
    value = ds[keyword].value
    if value is None or (hasattr(value, "__len__") and len(value) == 0):
        return None
    return value


def _clean_display_tags(ds: Any) -> None:
    """Make the display tags mean what the standard says before pydicom applies them (in place).

    Empty elements count as absent: an empty WindowCenter/WindowWidth gives no window (pydicom
    would otherwise map every pixel to mid-grey), an empty RescaleSlope/RescaleIntercept takes its
    default 1/0 (pydicom would raise a TypeError). A window needs both centre and width, and a
    positive width (PS3.3 C.11.2.1.2); otherwise it is ignored. A slope without an intercept (or the
    reverse) gets the default for the missing one, so the rescale is still applied.
    """
    for keyword in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth", "VOILUTFunction",
                    "VOILUTSequence", "ModalityLUTSequence", "PresentationLUTShape"):
        if keyword in ds and _tag_value(ds, keyword) is None:
            del ds[keyword]
    if ("RescaleSlope" in ds) != ("RescaleIntercept" in ds):
        ds.RescaleSlope = ds.get("RescaleSlope", 1)
        ds.RescaleIntercept = ds.get("RescaleIntercept", 0)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        width = ds.WindowWidth
        first = width[0] if isinstance(width, (list, tuple)) or type(width).__name__ == "MultiValue" else width
        if float(first) < 1:
            del ds["WindowCenter"], ds["WindowWidth"]
    elif "WindowCenter" in ds or "WindowWidth" in ds:
        for keyword in ("WindowCenter", "WindowWidth"):
            if keyword in ds:
                del ds[keyword]


def _decode_dicom(data: bytes) -> _Decoded:
    """DICOM through pydicom in the order of the grayscale pipeline (PS3.4 N.2): modality LUT or
    rescale, then the VOI LUT sequence or else the window (first value of a multi-valued window), then
    MONOCHROME1 / Presentation LUT Shape INVERSE inversion. Without any VOI the stored range is
    stretched to 0..255."""
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
    _clean_display_tags(ds)
    values = apply_modality_lut(raw, ds)
    if ds.get("VOILUTSequence"):
        values, (lo, hi) = _apply_voi_lut_sequence(values, ds)
        pixels = np.clip((values - lo) * (255.0 / (hi - lo)), 0, 255)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        values = apply_voi_lut(values, ds)
        lo, hi = _voi_output_range(ds)
        pixels = np.clip((np.asarray(values, dtype=np.float64) - lo) * (255.0 / (hi - lo)), 0, 255)
    else:  # no display window given: stretch the stored range
        pixels = _minmax(np.asarray(values, dtype=np.float64))
    if ds.get("PhotometricInterpretation") == "MONOCHROME1" or _tag_value(ds, "PresentationLUTShape") == "INVERSE":
        pixels = 255.0 - pixels  # MONOCHROME1: the lowest value is white (PS3.3 C.7.6.3.1.2)
    return _Decoded(pixels, size, str(ds.get("BitsStored", raw.dtype.itemsize * 8)))


def _apply_voi_lut_sequence(values: np.ndarray, ds: Any) -> tuple[np.ndarray, tuple[float, float]]:
    """The first VOI LUT of the sequence applied to the modality values (PS3.3 C.11.2.1.1): values
    below the first mapped value take entry 0, values past the table the last entry. Returns float64
    values and the LUT's output range ``(0, 2**bits - 1)``.

    Own code, not ``pydicom.pixels.apply_voi_lut``: pydicom 3 builds its index array in the LUT's
    output type, so an 8-bit LUT with more than 256 entries (common: 4096 entries for 12-bit
    detectors) wraps the index modulo 256, and float modality values (after a rescale) are truncated.
    """
    item = ds.VOILUTSequence[0]
    n_entries, first, bits = (int(v) for v in item.LUTDescriptor)
    n_entries = n_entries or 65536  # PS3.3: 0 means 2**16 entries
    if first >= 2**15 and ds.get("PixelRepresentation", 0) == 1:  # descriptor read as US but signed
        first -= 2**16
    data = item.LUTData
    if isinstance(data, (bytes, bytearray)):  # OW: 16-bit words in the data set's byte order
        little = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        order = ">" if little is not None and not little.is_little_endian else "<"
        lut = np.frombuffer(bytes(data), dtype=f"{order}u2")[:n_entries].astype(np.float64)
    else:
        lut = np.asarray(list(data) if hasattr(data, "__len__") else [data], dtype=np.float64)
    index = np.clip(np.floor(np.asarray(values, dtype=np.float64)) - first, 0, len(lut) - 1).astype(np.int64)
    return lut[index], (0.0, float(2**bits - 1))


def _voi_output_range(ds: Any) -> tuple[float, float]:
    """The range the VOI LUT or window maps onto, so that it becomes black..white."""
    from pydicom.pixels import apply_voi_lut

    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None:
        return 0.0, float(2 ** int(seq[0].LUTDescriptor[2]) - 1)
    with np.errstate(over="ignore"):
        lo, hi = apply_voi_lut(np.array([-1e30, 1e30]), ds)
    return float(lo), (float(hi) if hi > lo else float(lo) + 1.0)


