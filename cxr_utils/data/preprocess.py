"""Pixel preprocessing after decoding: square crop, antialiased resize to 8 bits, histogram equalisation."""

from __future__ import annotations

import numpy as np
from PIL import Image


def _center_crop(pixels: np.ndarray) -> np.ndarray:
    h, w = pixels.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return pixels[top:top + side, left:left + side]


def _to_square(pixels: np.ndarray, size: int, crop: str) -> np.ndarray:
    """Crop, then resize in floating point (bilinear, antialiased when shrinking): float32 (size, size)."""
    if crop == "center":
        pixels = _center_crop(pixels)
    if pixels.shape != (size, size):
        img = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32))
        return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))
    return np.asarray(pixels, dtype=np.float64)


def _round_uint8(pixels: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _to_square_uint8(pixels: np.ndarray, size: int, crop: str) -> np.ndarray:
    """Crop, resize in floating point (bilinear, antialiased when shrinking), then round to 8 bits."""
    return _round_uint8(_to_square(pixels, size, crop))


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

