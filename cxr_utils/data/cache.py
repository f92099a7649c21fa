"""The on-disk cache of loaded data sets: 8-bit images under ``cache_dir/<key>.pt``, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from .report import DataReport, _one_line

FORMAT_VERSION = 2  # 2: bit_scaling, constant images left out, nested duplicate trees, EXIF, alpha


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


