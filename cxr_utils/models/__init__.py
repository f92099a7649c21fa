"""Model families by name, so the training loop and run loading never name a model themselves.

A family is a module that defines ``build_generator(cfg)`` and ``build_discriminator(cfg)`` (cfg is a
``train_config.TrainConfig``) and may define ``Steps``, a ``losses.GANSteps`` subclass with its own
losses and regularisers (StyleGAN2's lives in ``stylegan2_loss.py``, exported by ``stylegan2.py``);
without one the shared adversarial steps (``GANSteps``: DCGAN's) are used. Adding a family is one
module plus one line in ``MODELS``; modules are imported only when asked for.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from torch import nn

from ..errors import ConfigError

MODELS: dict[str, str] = {
    "dcgan": "cxr_utils.models.dcgan",
    "stylegan2": "cxr_utils.models.stylegan2",
    "fastgan": "cxr_utils.models.fastgan",
}


def family(name: str) -> ModuleType:
    """The module implementing model family ``name``."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return importlib.import_module(MODELS[name])


def build_generator(cfg: Any) -> nn.Module:
    return family(cfg.model).build_generator(cfg)


def build_discriminator(cfg: Any) -> nn.Module:
    return family(cfg.model).build_discriminator(cfg)
