"""Where relative paths point (so the same strings work from the repo root, `notebooks/` or elsewhere),
and how files are written so that none is ever seen half-written.

Notebooks run with the repo root as working directory under papermill but with `notebooks/` under
Jupyter; defaults such as ``data/cache`` and ``results/...`` must land in the same place either way.
"""

from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, Callable


@lru_cache(maxsize=1)
def _root_from_package() -> Path | None:
    here = Path(__file__).resolve().parent.parent
    return here if _is_checkout(here) else None


def _is_checkout(path: Path) -> bool:
    return (path / "pyproject.toml").is_file() and (path / "cxr_utils").is_dir()


def repo_root() -> Path:
    """The project checkout: next to the package, else the nearest checkout above the cwd, else the cwd."""
    root = _root_from_package()
    if root is not None:
        return root
    cwd = Path.cwd().resolve()
    return next((d for d in (cwd, *cwd.parents) if _is_checkout(d)), cwd)


def project_path(path: str | Path) -> Path:
    """Resolve ``path``: absolute stays; relative means the cwd, except inside a sub-folder of the checkout.

    From a sub-folder of the checkout (e.g. ``notebooks/``) a relative path that does not exist there
    is taken relative to the repo root, so ``results/x`` and ``data/cache`` mean the same folders
    whether a notebook runs under papermill (cwd = root) or Jupyter (cwd = ``notebooks/``).
    """
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    cwd = Path.cwd().resolve()
    if (cwd / p).exists():
        return cwd / p
    root = repo_root().resolve()
    if cwd != root and root in cwd.parents:
        return root / p
    return cwd / p


def atomic_write(path: str | Path, write: Callable[[IO], None], binary: bool = True) -> None:
    """Write a file that never exists half-written under ``path``, even on SIGKILL or power loss.

    ``write`` fills a temporary file in the same folder, which is fsynced and then renamed over ``path``
    (atomic on POSIX); the folder is fsynced so the rename itself is durable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`atomic_write`."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))
