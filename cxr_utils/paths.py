"""Where relative paths point, so the same strings work from the repo root, `notebooks/` or elsewhere.

Notebooks run with the repo root as working directory under papermill but with `notebooks/` under
Jupyter; defaults such as ``data/cache`` and ``results/...`` must land in the same place either way.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


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
