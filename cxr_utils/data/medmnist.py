"""MedMNIST sources (``medmnist:<flag>[:split]``): the npz files read through the ``medmnist`` package."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..paths import project_path
from .dataset import _Items
from .report import DataReport, _one_line

MEDMNIST_ROOT = "data/medmnist"
MEDMNIST_SPLITS = ("train", "val", "test")


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


