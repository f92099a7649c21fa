"""DCGAN generator and discriminator, as in the reference, plus the switches of the stabilised variant.

At ``image_size=64`` and ``base=64`` the layer lists are exactly the reference's:

- D: Conv(C,64) Conv(64,128) Conv(128,256) Conv(256,512), each 4x4 stride 2 pad 1 + BatchNorm +
  LeakyReLU(0.2) -- BatchNorm on the first layer too, as the reference does (the DCGAN paper omits it) --
  then Conv(512,1) 4x4 stride 1 pad 0 + Sigmoid; no conv has a bias.
- G: ConvT(latent,512) 4x4 stride 1 pad 0, then ConvT(512,256) ConvT(256,128) ConvT(128,64) 4x4
  stride 2 pad 1, each + BatchNorm + ReLU, then ConvT(64,C) 4x4 stride 2 pad 1 + Tanh; no biases.

Other sizes (powers of two from 16) change the number of stride-2 blocks, log2(size) - 2. Widths double
per block from ``base`` and are capped at ``8 * base``, so ``image_size=128`` adds one 8*base -> 8*base
block at 4x4 -> 8x8 in G (and 8x8 -> 4x4 in D); the rest is unchanged.

The stabilised switches live on the discriminator: ``spectral_norm`` wraps every conv, ``batch_norm=False``
drops the BatchNorms (convs then get biases, since nothing follows them to absorb a bias), and
``sigmoid=False`` leaves raw scores (for the hinge loss). Training always reads ``D.logits``; the
sigmoid only changes what ``D(x)`` returns.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _sn


def _n_blocks(image_size: int) -> int:
    """Number of stride-2 (de)convolutions between 4x4 and ``image_size``."""
    n = math.log2(image_size) if image_size > 0 else -1
    if not float(n).is_integer() or image_size < 16:
        raise ValueError(f"image_size must be a power of two >= 16, got {image_size}")
    return int(n) - 2


def _widths(base: int, n: int) -> list[int]:
    """Feature widths from high resolution to low: base, 2*base, ... capped at 8*base."""
    return [base * min(2**i, 8) for i in range(n)]


class Generator(nn.Module):
    """z (N, latent) or (N, latent, 1, 1) -> images (N, channels, image_size, image_size) in [-1, 1]."""

    def __init__(self, latent_dim: int = 128, channels: int = 3, base: int = 64, image_size: int = 64):
        super().__init__()
        self.latent_dim, self.channels, self.image_size = latent_dim, channels, image_size
        widths = _widths(base, _n_blocks(image_size))[::-1]  # low resolution first
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, widths[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(True),
        ]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:
            z = z[:, :, None, None]
        return self.main(z)


class Discriminator(nn.Module):
    """images -> (N,) probability of being real (or raw score when ``sigmoid=False``)."""

    def __init__(self, channels: int = 3, base: int = 64, image_size: int = 64, spectral_norm: bool = False,
                 batch_norm: bool = True, sigmoid: bool = True):
        super().__init__()
        self.channels, self.image_size = channels, image_size
        wrap = _sn if spectral_norm else (lambda m: m)
        widths = [channels] + _widths(base, _n_blocks(image_size))
        layers: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers.append(wrap(nn.Conv2d(cin, cout, 4, 2, 1, bias=not batch_norm)))
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
        layers.append(wrap(nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=not batch_norm)))
        self.main = nn.Sequential(*layers)
        self.head = nn.Sigmoid() if sigmoid else nn.Identity()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid scores, shape (N,): what the losses use (stable BCE, hinge)."""
        return self.main(x).flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.logits(x))


@torch.no_grad()
def init_dcgan_weights(module: nn.Module) -> None:
    """DCGAN init, for ``module.apply``: conv weights N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        # With spectral norm the raw weight lives in the parametrization's `original`.
        weight = module.parametrizations.weight.original if hasattr(module, "parametrizations") else module.weight
        nn.init.normal_(weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def build_generator(cfg: Any) -> Generator:
    """The generator a TrainConfig describes, DCGAN-initialised."""
    G = Generator(cfg.latent_dim, cfg.channels, cfg.base, cfg.image_size)
    G.apply(init_dcgan_weights)
    return G


def build_discriminator(cfg: Any) -> Discriminator:
    """The discriminator a TrainConfig describes, DCGAN-initialised; a sigmoid head unless hinge loss."""
    D = Discriminator(cfg.channels, cfg.base, cfg.image_size, spectral_norm=cfg.spectral_norm,
                      batch_norm=cfg.d_batchnorm, sigmoid=cfg.loss != "hinge")
    D.apply(init_dcgan_weights)
    return D
