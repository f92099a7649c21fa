"""Shared test setup.

Notebooks are tested with nbval on copies whose parameters papermill has replaced by small, fast ones
(``SMOKE_PARAMETERS``); the copies go to ``build/nbval/`` (git-ignored) when pytest starts, and
``make test`` passes that folder to pytest with ``--nbval-lax``. Every notebook must have an entry here,
so a new notebook cannot silently go untested.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
# Tests run two at a time (pytest -n 2) on small tensors: one thread each avoids oversubscribing the
# cores, which made some files an order of magnitude slower.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
NBVAL_DIR = ROOT / "build" / "nbval"
OUT = NBVAL_DIR / "out"

SMOKE_PARAMETERS: dict[str, dict] = {
    "01_data_exploration": {"source": "phantom:64", "out_dir": str(OUT / "01")},
    "02_dcgan_training": {"source": "phantom:64", "epochs": 2, "batch_size": 32, "holdout_fraction": 0.25,
                          "run_name": "nb02", "out_root": str(OUT), "n_eval": 24},
    "03_gan_comparison": {"source": "phantom:48", "kimg": 0.064, "milestones": 2, "n_eval": 16, "seconds": None,
                          "contenders": ["DCGAN lungcancer-dcgan", "StyleGAN2-ADA", "FastGAN projected"],
                          "c2st": False, "train_overrides": {"base": 8, "sg2_arch": "tiny", "latent_dim": 16,
                                                             "n_fixed": 4, "fastgan_width": 0.125},
                          "out_dir": str(OUT / "03")},
    "04_resnet50_augmentation_study": {"source": "phantom:200", "backbone": "smallcnn", "fractions": [0.5, 1.0],
                                       "ratios": [1.0], "seeds": [0, 1, 2], "generators": ["lungcancer-dcgan"],
                                       "gan_epochs": 1, "gan_base": 16, "clf_epochs": 2, "n_boot": 200,
                                       "out_dir": str(OUT / "04")},
    "05_latent_explorer": {"run_dir": str(OUT / "tiny-run"), "n_components": 3,
                           "out_dir": str(OUT / "05")},
}


def _tiny_run(run_dir: Path) -> None:
    """A one-epoch DCGAN run folder for the notebooks that read one (05)."""
    from cxr_utils import train

    cfg = train.make_config("lungcancer-dcgan", source="phantom:64", epochs=1, batch_size=32, seed=0)
    train.train(cfg, run_dir, overwrite=True, progress=False)


def _write_smoke_notebooks() -> None:
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    # The folder is this function's scratch space and is rebuilt whole: a copy of a notebook since renamed
    # or an output folder of an earlier run with other smoke parameters would otherwise be tested again.
    shutil.rmtree(NBVAL_DIR, ignore_errors=True)
    NBVAL_DIR.mkdir(parents=True)
    for nb_path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        if nb_path.stem not in SMOKE_PARAMETERS:
            raise RuntimeError(f"{nb_path.name} has no entry in tests/conftest.py SMOKE_PARAMETERS")
        nb = load_notebook_node(str(nb_path))  # adds the metadata papermill expects
        nb = parameterize_notebook(nb, SMOKE_PARAMETERS[nb_path.stem])
        nbformat.write(nb, NBVAL_DIR / nb_path.name)
    _tiny_run(OUT / "tiny-run")


def pytest_configure(config) -> None:
    # Only the controller writes (xdist workers would race on the same files).
    if os.environ.get("PYTEST_XDIST_WORKER") is None and any("nbval" in str(a) for a in config.args):
        _write_smoke_notebooks()
