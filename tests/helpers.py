"""Shared test helpers (imported by test modules; pytest puts this folder on sys.path)."""

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def assert_identical(a, b, where="state"):
    """Recursive bitwise equality of checkpoint contents (tensors, dicts, lists, plain values)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (reflect padding) of N x 1 x H x W images: an independent way to degrade them."""
    r = math.ceil(3 * sigma)
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    g = torch.exp(-t * t / (2 * sigma * sigma))
    k = g[:, None] * g[None, :] / g.sum() ** 2
    return F.conv2d(F.pad(x, (r, r, r, r), mode="reflect"), k[None, None])


def load_small(source, tmp_path: Path, **kw):
    """``data.load`` at 32 px with a cache inside the test's folder and no progress bar."""
    from cxr_utils import data

    kw.setdefault("image_size", 32)
    kw.setdefault("cache_dir", tmp_path / "cache")
    kw.setdefault("progress", False)
    return data.load(str(source), **kw)


def image_u8(ds, i: int = 0) -> np.ndarray:
    """Image ``i`` of a data set as integer grey levels 0..255."""
    from cxr_utils.images import to_uint8

    return to_uint8(ds.images[i, 0]).numpy().astype(int)


def one_line(excinfo) -> str:
    """The message of a raised error, asserted to be a single non-empty line."""
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    return msg
