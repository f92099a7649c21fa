"""Source strings (``folder``, ``medmnist:<flag>[:split]``, ``phantom[:N]``) and option checks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from ..errors import DataError
from .folder import SOURCE_FORMS
from .medmnist import MEDMNIST_SPLITS, _medmnist_info

DEFAULT_PHANTOM_N = 2000
SUPPORTED_SIZES: dict[str, Sequence[int]] = {
    "medmnist": (28, 64, 128, 224),
    "folder": range(32, 1025),
    "phantom": range(64, 257),
}


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


