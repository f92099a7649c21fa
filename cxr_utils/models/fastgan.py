"""FastGAN generator and three discriminators for few-shot training: from scratch, projected, hybrid.

Networks here; the training step (hinge loss per head, L1 reconstruction) is
``models/fastgan_loss.FastGANSteps``, exported as ``Steps`` for the model registry, and DiffAugment is
``ada.py``'s pipeline at a fixed p. Written from the papers:

* FastGAN -- Liu et al. 2021, "Towards Faster and Stabilized GAN Training for High-fidelity Few-shot
  Image Synthesis" (ICLR): a light generator whose upsampling blocks are nearest x2, 3x3 conv,
  BatchNorm and GLU, with skip-layer excitation (SLE) from low- to high-resolution maps; a
  discriminator trained from scratch with an auxiliary reconstruction decoder.
* Projected GAN -- Sauer et al. 2021, "Projected GANs Converge Faster" (NeurIPS): the discriminator
  sees a frozen ImageNet network's multi-scale features (EfficientNet-Lite0) through fixed random
  cross-channel mixing (CCM, 1x1 convs) and cross-scale mixing (CSM, top-down feature-pyramid fusion),
  with one small patch discriminator per scale.

Design choices
--------------
* Generator widths per resolution (``width=1``): 4:256, 8:128, 16:64, 32:32, 64:16, 128:16, 256:8,
  scaled by ``width`` (at least 4 channels). The 4x4 map comes from a transposed 4x4 conv on z
  followed by BatchNorm and GLU (so the conv produces twice the channels). SLE pairs are 4->32, 8->64,
  16->128 and 32->256, those that exist at the image size. The gate is the paper's: adaptive average
  pool to 4x4, 4x4 conv to 1x1, LeakyReLU(0.1), 1x1 conv, sigmoid, channel-wise multiply. Optional noise
  injection adds per-pixel Gaussian noise scaled by a learned, zero-initialised scalar per block
  (off by default, so G(z) is a function of z alone).
* The generator has no spectral norm (BatchNorm follows every conv); every trainable discriminator
  conv has spectral norm and no BatchNorm (real and fake batches pass D separately; BatchNorm would
  tell them apart by batch statistics). The reconstruction decoder, trained on reals only, keeps
  BatchNorm as in the generator.
* The scratch discriminator's down block is FastGAN's two-path block without BatchNorm:
  (4x4 stride-2 conv, LeakyReLU(0.2), 3x3 conv, LeakyReLU(0.2)) averaged with (2x2 average pool,
  1x1 conv). Its patch logits come from 8x8 and 4x4 feature maps. The decoder reconstructs the real
  image downsampled (area) to 32x32 from the 8x8 map: a pixel L1 target instead of the paper's
  perceptual (VGG) one.
* The projected discriminator's frozen parts (feature network, CCM, CSM) are stored as *buffers*, not
  parameters: ``D.parameters()`` holds only the trainable heads, so an optimiser built on it, or a
  loop that calls ``D.requires_grad_(True)`` after a generator step, can never change them. They stay
  in eval mode (BatchNorm running statistics never update) whatever ``D.train()`` is told, and their
  weights are in the state dict (checkpoints restore the exact projection). CCM/CSM weights are drawn
  N(0, 1/fan_in) from a private generator seeded by ``projection_seed``: the same seed gives the same
  projection whatever the global RNG state (the trainable heads draw from the global RNG as usual).
* Feature network contract: a module mapping (N, 3, S, S) to a list of feature maps, deepest last,
  or a timm model with ``forward_intermediates`` (a classification model; its intermediates are
  used and the head is skipped); the last four maps are used (for timm ``tf_efficientnet_lite0``
  these are strides 4, 8, 16, 32 with 24, 40, 112, 320 channels). Images in [-1, 1] are resized (bilinear,
  antialiased when shrinking) to ``feature_size``, gray is replicated to 3 channels, then normalised
  with the network's ``pretrained_cfg`` mean/std (timm's TF-ported Lite0 uses 0.5/0.5, i.e. [-1, 1]
  passes through unchanged) unless ``mean``/``std`` are given.

Logit convention
----------------
Every discriminator's ``forward(images)`` returns a list of logit tensors, one per head, each
(N, 1, h, w) (a patch grid; h = w = 1 for a global head). ``D.head_names`` names them in order.
A hinge loss should average over each tensor's patches and batch, then average over heads, so every
head weighs the same whatever its patch count:
``mean_k mean(relu(1 - logits_k))``. The hybrid returns the scratch heads first, then the projected
ones (``["scratch8", "scratch4", "proj0", ..., "proj3"]``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from ..errors import ConfigError
from .fastgan_loss import FastGANSteps as Steps  # noqa: F401  (the family's training step)

IMAGE_SIZES = (64, 128, 256)
D_ARCHS = ("scratch", "projected", "hybrid")

#: Generator channels per resolution at ``width=1`` (FastGAN-lite: 2.0 M parameters at 64 px).
G_WIDTHS = {4: 256, 8: 128, 16: 64, 32: 32, 64: 16, 128: 16, 256: 8}
#: Scratch-discriminator channels per resolution at ``width=1`` (at 64 px about the generator's FLOPs).
D_WIDTHS = {256: 12, 128: 12, 64: 24, 32: 48, 16: 96, 8: 192, 4: 192}
#: Skip-layer excitation pairs (low resolution -> high resolution), as in the paper.
SLE_PAIRS = ((4, 32), (8, 64), (16, 128), (32, 256))
#: Output widths of the random cross-channel mixing per scale (Projected GAN's 64 * 2**i).
CCM_WIDTHS = (64, 128, 256, 512)
#: Hidden width of each projected patch head at ``width=1``.
HEAD_WIDTH = 64
#: Side of the real image the scratch discriminator's decoder reconstructs.
RECON_SIZE = 32
#: Channels of the detail discriminator's two strided convs (fixed: it is meant to stay cheap).
DETAIL_WIDTHS = (16, 32)


def _check_common(image_size: int, channels: int) -> None:
    if image_size not in IMAGE_SIZES:
        raise ConfigError(f"fastgan image_size must be one of {IMAGE_SIZES}, got {image_size}")
    if channels not in (1, 3):
        raise ConfigError(f"fastgan channels must be 1 or 3, got {channels}")


def _scaled(table: dict[int, int], width: float) -> dict[int, int]:
    if not width > 0:
        raise ConfigError(f"fastgan_width must be > 0, got {width}")
    return {r: max(4, int(round(c * width))) for r, c in table.items()}


def _sn_conv(cin: int, cout: int, k: int, stride: int = 1, padding: int = 0) -> nn.Module:
    return spectral_norm(nn.Conv2d(cin, cout, k, stride, padding))


def _check_images(x: Tensor, channels: int, image_size: int, who: str) -> None:
    if x.dim() != 4 or x.shape[1] != channels or x.shape[2] != image_size or x.shape[3] != image_size:
        raise ConfigError(f"{who} expects images (N, {channels}, {image_size}, {image_size}), "
                          f"got {tuple(x.shape)}")


# --------------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------------


class NoiseInjection(nn.Module):
    """x + s * n with n ~ N(0, 1) per pixel (shared over channels) and s a learned scalar, zero at start."""

    def __init__(self) -> None:
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device, dtype=x.dtype)
        return x + self.strength * noise


UPSAMPLE_MODES = ("nearest", "bilinear")


class UpBlock(nn.Module):
    """(N, cin, r, r) -> (N, cout, 2r, 2r): x2 upsampling (``upsample``: nearest, FastGAN's, or bilinear),
    3x3 conv to 2*cout, [noise], BatchNorm, GLU.

    Bilinear upsampling (align_corners=False) is a fixed low-pass before the conv, in the spirit of
    StyleGAN2's filtered upsampling (Karras et al. 2020) and of Odena et al. 2016 ("Deconvolution and
    checkerboard artifacts"): nearest x2 copies each pixel into a 2x2 block, and a generator at a few
    dozen kimg leaves that grid visible in flat regions, the texture a C2ST's detail band picks up.
    """

    def __init__(self, cin: int, cout: int, noise: bool = False, upsample: str = "nearest"):
        super().__init__()
        if upsample not in UPSAMPLE_MODES:
            raise ConfigError(f"fastgan upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")
        self.upsample = upsample
        self.conv = nn.Conv2d(cin, 2 * cout, 3, 1, 1, bias=False)
        self.noise = NoiseInjection() if noise else nn.Identity()
        self.bn = nn.BatchNorm2d(2 * cout)

    def forward(self, x: Tensor) -> Tensor:
        if self.upsample == "nearest":
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return F.glu(self.bn(self.noise(self.conv(x))), dim=1)


class SLE(nn.Module):
    """Skip-layer excitation (FastGAN, Sec. 3.1): a low-resolution map gates a high-resolution one.

    ``gate(low)`` is (N, c_high, 1, 1) in (0, 1): adaptive average pool to 4x4, 4x4 conv (no padding)
    to 1x1, LeakyReLU(0.1), 1x1 conv, sigmoid. ``forward(low, high)`` = ``high * gate(low)``.
    """

    def __init__(self, c_low: int, c_high: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.conv1 = nn.Conv2d(c_low, c_high, 4, 1, 0, bias=False)
        self.conv2 = nn.Conv2d(c_high, c_high, 1, 1, 0, bias=False)

    def gate(self, low: Tensor) -> Tensor:
        return torch.sigmoid(self.conv2(F.leaky_relu(self.conv1(self.pool(low)), 0.1)))

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        return high * self.gate(low)


class Generator(nn.Module):
    """FastGAN generator: z (N, z_dim) or (N, z_dim, 1, 1) -> images (N, channels, S, S) in [-1, 1].

    Args:
        z_dim: latent size.
        image_size: S, one of 64, 128, 256.
        channels: 1 (gray) or 3.
        width: multiplier on :data:`G_WIDTHS` (ignored for resolutions given in ``widths``).
        widths: optional per-resolution channel table overriding the scaled defaults.
        noise: add noise injection to every upsampling block.
        upsample: ``"nearest"`` (FastGAN's) or ``"bilinear"`` in every upsampling block (see UpBlock).

    Raises:
        ConfigError: size, channels or width out of range; a latent of the wrong shape in ``forward``.
    """

    def __init__(self, z_dim: int = 128, image_size: int = 64, channels: int = 3, width: float = 1.0,
                 widths: dict[int, int] | None = None, noise: bool = False, upsample: str = "nearest"):
        super().__init__()
        _check_common(image_size, channels)
        if z_dim < 1:
            raise ConfigError(f"latent_dim must be >= 1, got {z_dim}")
        self.z_dim = self.latent_dim = z_dim
        self.image_size, self.channels = image_size, channels
        ch = {**_scaled(G_WIDTHS, width), **(widths or {})}
        if any(not isinstance(c, int) or c < 1 for c in ch.values()):
            raise ConfigError(f"generator widths must be positive integers, got {widths}")
        self.widths = {r: ch[r] for r in ch if r <= image_size}
        self.init = nn.ConvTranspose2d(z_dim, 2 * ch[4], 4, 1, 0, bias=False)
        self.init_bn = nn.BatchNorm2d(2 * ch[4])
        self.ups = nn.ModuleDict()
        r = 8
        while r <= image_size:
            self.ups[str(r)] = UpBlock(ch[r // 2], ch[r], noise, upsample)
            r *= 2
        self.sle_source = {hi: lo for lo, hi in SLE_PAIRS if hi <= image_size}
        self.sles = nn.ModuleDict({str(hi): SLE(ch[lo], ch[hi]) for hi, lo in self.sle_source.items()})
        self.to_img = nn.Conv2d(ch[image_size], channels, 3, 1, 1)

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() == 4 and z.shape[2:] == (1, 1):
            z = z.flatten(1)
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ConfigError(f"generator expects latents (N, {self.z_dim}), got {tuple(z.shape)}")
        x = F.glu(self.init_bn(self.init(z[:, :, None, None])), dim=1)
        maps = {4: x}
        r = 8
        while r <= self.image_size:
            x = self.ups[str(r)](x)
            if r in self.sle_source:
                x = self.sles[str(r)](maps[self.sle_source[r]], x)
            maps[r] = x
            r *= 2
        return torch.tanh(self.to_img(x))


# --------------------------------------------------------------------------------------------------
# Discriminator trained from scratch
# --------------------------------------------------------------------------------------------------


class DownBlock(nn.Module):
    """(N, cin, r, r) -> (N, cout, r/2, r/2): mean of a strided conv path and an avg-pool 1x1 path."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.main = nn.Sequential(_sn_conv(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2),
                                  _sn_conv(cout, cout, 3, 1, 1), nn.LeakyReLU(0.2))
        self.skip = nn.Sequential(nn.AvgPool2d(2), _sn_conv(cin, cout, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (self.main(x) + self.skip(x)) / 2


def _patch_head(cin: int, hidden: int) -> nn.Sequential:
    """(N, cin, h, w) -> (N, 1, h, w) logits: SN 3x3 conv, LeakyReLU(0.2), SN 1x1 conv."""
    return nn.Sequential(_sn_conv(cin, hidden, 3, 1, 1), nn.LeakyReLU(0.2), _sn_conv(hidden, 1, 1))


class ScratchDiscriminator(nn.Module):
    """FastGAN-style discriminator trained from scratch: images (N, C, S, S) -> [logits 8x8, logits 4x4].

    A spectral-norm encoder (3x3 stem, then :class:`DownBlock` from S down to 4x4) with patch heads on
    the 8x8 and 4x4 maps. With ``decoder=True`` a small decoder (8x8 -> 32x32) reconstructs the input
    downsampled to :data:`RECON_SIZE` from the 8x8 map, for FastGAN's self-supervised loss (pixel L1
    here); see :meth:`forward_with_reconstruction` and :meth:`reconstruction_target`.

    Raises:
        ConfigError: size, channels or width out of range; images of the wrong shape in ``forward``.
    """

    head_names = ["scratch8", "scratch4"]

    def __init__(self, image_size: int = 64, channels: int = 3, width: float = 1.0, decoder: bool = True):
        super().__init__()
        _check_common(image_size, channels)
        self.image_size, self.channels = image_size, channels
        ch = _scaled(D_WIDTHS, width)
        self.stem = nn.Sequential(_sn_conv(channels, ch[image_size], 3, 1, 1), nn.LeakyReLU(0.2))
        self.down = nn.ModuleDict()
        r = image_size
        while r > 4:
            self.down[str(r // 2)] = DownBlock(ch[r], ch[r // 2])
            r //= 2
        self.head8 = _patch_head(ch[8], ch[8] // 2)
        self.head4 = _patch_head(ch[4], ch[4] // 2)
        self.decoder: nn.Module | None = None
        if decoder:
            c16, c32 = max(4, ch[8] // 4), max(4, ch[8] // 8)
            self.decoder = nn.Sequential(UpBlock(ch[8], c16), UpBlock(c16, c32),
                                         nn.Conv2d(c32, channels, 3, 1, 1), nn.Tanh())

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _check_images(x, self.channels, self.image_size, "discriminator")
        h = self.stem(x)
        f8 = None
        for key, block in self.down.items():
            h = block(h)
            if key == "8":
                f8 = h
        return f8, h

    def forward(self, x: Tensor) -> list[Tensor]:
        f8, f4 = self._encode(x)
        return [self.head8(f8), self.head4(f4)]

    def forward_with_reconstruction(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """(logits as ``forward``, reconstruction (N, C, 32, 32) in [-1, 1]) from one encoder pass.

        Raises:
            ConfigError: the discriminator was built with ``decoder=False``.
        """
        if self.decoder is None:
            raise ConfigError("this discriminator has no reconstruction decoder (built with decoder=False)")
        f8, f4 = self._encode(x)
        return [self.head8(f8), self.head4(f4)], self.decoder(f8)

    @staticmethod
    def reconstruction_target(x: Tensor) -> Tensor:
        """The real images (N, C, S, S) area-downsampled to (N, C, 32, 32): the decoder's L1 target."""
        return F.interpolate(x, size=(RECON_SIZE, RECON_SIZE), mode="area")


# --------------------------------------------------------------------------------------------------
# Projected discriminator
# --------------------------------------------------------------------------------------------------


def _freeze_to_buffers(module: nn.Module) -> nn.Module:
    """Turn every parameter of ``module`` into a buffer of the same name (detached, no grad).

    Buffers are invisible to ``parameters()`` and ``requires_grad_``, so no optimiser or gradient
    toggle can reach them, while ``to()``, ``state_dict()`` and deepcopy still carry them.
    """
    for sub in module.modules():
        if hasattr(sub, "parametrizations"):
            raise ConfigError(f"feature network module {type(sub).__name__} is parametrized; "
                              "pass a plain network")
        for name, p in list(sub._parameters.items()):
            if p is None:
                continue
            del sub._parameters[name]
            sub.register_buffer(name, p.detach().clone())
    return module


def _random_conv(cin: int, cout: int, generator: torch.Generator) -> nn.Conv2d:
    """A bias-free 1x1 conv with weights N(0, 1/cin): a fixed random projection that keeps the scale."""
    conv = torch.nn.utils.skip_init(nn.Conv2d, cin, cout, 1, bias=False)  # no draw from the global RNG
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) / math.sqrt(cin))
    return conv


class RandomProjection(nn.Module):
    """Projected GAN's fixed random CCM + CSM: four feature maps -> four mixed maps of CCM widths.

    CCM: one random 1x1 conv per scale, c_i -> w_i. CSM, deepest first: p_3 = ccm_3;
    p_i = ccm_i + bilinear_up(conv1x1_i(p_{i+1})) with random 1x1 convs w_{i+1} -> w_i.
    Weights are drawn from ``torch.Generator().manual_seed(seed)``; the caller freezes them.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int] = CCM_WIDTHS, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.ccm = nn.ModuleList([_random_conv(ci, co, g) for ci, co in zip(in_channels, out_channels)])
        self.csm = nn.ModuleList([_random_conv(out_channels[i + 1], out_channels[i], g)
                                  for i in range(len(out_channels) - 1)])

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        mixed = [conv(f) for conv, f in zip(self.ccm, feats)]
        out = [mixed[-1]]
        for i in range(len(mixed) - 2, -1, -1):
            up = F.interpolate(self.csm[i](out[0]), size=mixed[i].shape[-2:], mode="bilinear",
                               align_corners=False)
            out.insert(0, mixed[i] + up)
        return out


class ProjectedHead(nn.Module):
    """(N, cin, r, r) -> (N, 1, min(r, 8), min(r, 8)) patch logits, spectral-norm convs throughout.

    SN 1x1 conv to ``hidden`` + LeakyReLU(0.2); SN 4x4 stride-2 convs + LeakyReLU(0.2) while the map is
    larger than 8x8; SN 3x3 conv + LeakyReLU(0.2); SN 1x1 conv to one logit per patch.
    """

    def __init__(self, cin: int, hidden: int, resolution: int):
        super().__init__()
        layers: list[nn.Module] = [_sn_conv(cin, hidden, 1), nn.LeakyReLU(0.2)]
        r = resolution
        while r > 8:
            layers += [_sn_conv(hidden, hidden, 4, 2, 1), nn.LeakyReLU(0.2)]
            r //= 2
        layers += [_sn_conv(hidden, hidden, 3, 1, 1), nn.LeakyReLU(0.2), _sn_conv(hidden, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ProjectedDiscriminator(nn.Module):
    """Projected GAN discriminator: images (N, C, S, S) in [-1, 1] -> four patch-logit tensors.

    Args:
        feature_network: frozen ImageNet feature extractor (see the module docstring's contract), e.g.
            ``timm.create_model("tf_efficientnet_lite0", features_only=True)``. It is taken over:
            its parameters become buffers and it is kept in eval mode.
        image_size, channels: the images D will see.
        feature_size: side the images are resized to before the feature network (e.g. 64, 128, 224).
        width: multiplier on the heads' hidden width :data:`HEAD_WIDTH`.
        projection_seed: seed of the random CCM/CSM weights.
        mean, std: input normalisation of the feature network (3 values each); default: its
            ``pretrained_cfg`` mean/std, else 0.5/0.5.

    Only the four heads are trainable (``parameters()``); gradients still flow through the frozen
    parts to the input images, so G learns through D.

    Raises:
        ConfigError: bad size/channels/feature_size, or a feature network that does not return at
            least four feature maps.
    """

    def __init__(self, feature_network: nn.Module, image_size: int = 64, channels: int = 3,
                 feature_size: int = 128, width: float = 1.0, projection_seed: int = 0,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__()
        _check_common(image_size, channels)
        if feature_size < 32:
            raise ConfigError(f"feature_size must be >= 32, got {feature_size}")
        if not width > 0:
            raise ConfigError(f"fastgan_width must be > 0, got {width}")
        self.image_size, self.channels, self.feature_size = image_size, channels, feature_size
        cfg = getattr(feature_network, "pretrained_cfg", None) or {}
        mean = mean if mean is not None else cfg.get("mean", (0.5, 0.5, 0.5))
        std = std if std is not None else cfg.get("std", (0.5, 0.5, 0.5))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.features = _freeze_to_buffers(feature_network).eval()
        with torch.no_grad():
            probe = self._backbone(torch.zeros(1, 3, feature_size, feature_size))
        in_ch = [f.shape[1] for f in probe]
        res = [f.shape[-1] for f in probe]
        self.projection = _freeze_to_buffers(RandomProjection(in_ch, CCM_WIDTHS, projection_seed)).eval()
        hidden = max(4, int(round(HEAD_WIDTH * width)))
        self.heads = nn.ModuleList([ProjectedHead(c, hidden, r) for c, r in zip(CCM_WIDTHS, res)])
        self.head_names = [f"proj{i}" for i in range(len(self.heads))]
        self.feature_channels, self.feature_resolutions = in_ch, res

    def _backbone(self, x: Tensor) -> list[Tensor]:
        if hasattr(self.features, "forward_intermediates"):  # a timm classification model
            feats = self.features.forward_intermediates(x, intermediates_only=True)
        else:
            feats = self.features(x)
        if not isinstance(feats, (list, tuple)) or len(feats) < 4:
            raise ConfigError("feature network must return a list of at least 4 feature maps "
                              "(e.g. timm features_only=True)")
        return list(feats[-4:])

    def train(self, mode: bool = True) -> ProjectedDiscriminator:
        """Set the heads' mode; the feature network and CCM/CSM always stay in eval mode."""
        super().train(mode)
        self.features.eval()
        self.projection.eval()
        return self

    def project(self, x: Tensor) -> list[Tensor]:
        """Images (N, C, S, S) in [-1, 1] -> the four mixed feature maps the heads see."""
        _check_images(x, self.channels, self.image_size, "discriminator")
        if self.channels == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.feature_size != self.image_size:
            x = F.interpolate(x, size=(self.feature_size, self.feature_size), mode="bilinear",
                              align_corners=False, antialias=self.feature_size < self.image_size)
        x = ((x + 1) / 2 - self.mean) / self.std
        return self.projection(self._backbone(x))

    def forward(self, x: Tensor) -> list[Tensor]:
        return [head(f) for head, f in zip(self.heads, self.project(x))]


class HybridDiscriminator(nn.Module):
    """A scratch and a projected discriminator side by side: logits of both, scratch heads first."""

    def __init__(self, scratch: ScratchDiscriminator, projected: ProjectedDiscriminator):
        super().__init__()
        if (scratch.image_size, scratch.channels) != (projected.image_size, projected.channels):
            raise ConfigError("hybrid discriminator parts disagree on image size or channels")
        self.image_size, self.channels = scratch.image_size, scratch.channels
        self.scratch, self.projected = scratch, projected
        self.head_names = list(scratch.head_names) + list(projected.head_names)

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.scratch(x) + self.projected(x)

    def forward_with_reconstruction(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """(all logits, the scratch part's 32x32 reconstruction); see ScratchDiscriminator."""
        logits, recon = self.scratch.forward_with_reconstruction(x)
        return logits + self.projected(x), recon

    reconstruction_target = staticmethod(ScratchDiscriminator.reconstruction_target)


class DetailDiscriminator(nn.Module):
    """Local-detail patch discriminator: images (N, C, S, S) -> [(N, 1, S/4, S/4) logits].

    A PatchGAN (Isola et al. 2017, "Image-to-Image Translation with Conditional Adversarial Networks")
    with a small receptive field (18 px) that sees the image beside its 4-neighbour Laplacian: SN 4x4
    stride-2 convs to :data:`DETAIL_WIDTHS` channels, LeakyReLU(0.2), an SN 3x3 conv, an SN 1x1 conv to
    one logit per patch (18,033 parameters at one channel). Why it exists: a projected
    discriminator at 64 px sees EfficientNet-Lite0 maps of stride >= 4 only, so nothing penalises pixel
    texture (checkerboard from nearest upsampling, column stripes); a classifier given the Laplacian
    tells such samples from radiographs at once. The Laplacian is a fixed buffer, never trained.

    Raises:
        ConfigError: bad size/channels; images of the wrong shape in ``forward``.
    """

    head_names = ["detail"]

    def __init__(self, image_size: int = 64, channels: int = 3):
        super().__init__()
        _check_common(image_size, channels)
        self.image_size, self.channels = image_size, channels
        lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        self.register_buffer("laplacian", lap.expand(channels, 1, 3, 3).clone())
        w1, w2 = DETAIL_WIDTHS
        self.net = nn.Sequential(_sn_conv(2 * channels, w1, 4, 2, 1), nn.LeakyReLU(0.2),
                                 _sn_conv(w1, w2, 4, 2, 1), nn.LeakyReLU(0.2),
                                 _sn_conv(w2, w2, 3, 1, 1), nn.LeakyReLU(0.2), _sn_conv(w2, 1, 1))

    def forward(self, x: Tensor) -> list[Tensor]:
        _check_images(x, self.channels, self.image_size, "discriminator")
        detail = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.laplacian, groups=self.channels)
        return [self.net(torch.cat([x, 4 * detail], dim=1))]


class WithDetail(nn.Module):
    """Any FastGAN discriminator plus a :class:`DetailDiscriminator`: its logits, then the detail head's.

    ``forward_with_reconstruction`` exists when the base discriminator has it (scratch and hybrid).
    """

    def __init__(self, base: nn.Module, detail: DetailDiscriminator):
        super().__init__()
        if (base.image_size, base.channels) != (detail.image_size, detail.channels):
            raise ConfigError("discriminator parts disagree on image size or channels")
        self.image_size, self.channels = base.image_size, base.channels
        self.base, self.detail = base, detail
        self.head_names = list(base.head_names) + list(detail.head_names)
        if hasattr(base, "forward_with_reconstruction"):
            self.forward_with_reconstruction = self._forward_with_reconstruction
            self.reconstruction_target = base.reconstruction_target

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.base(x) + self.detail(x)

    def _forward_with_reconstruction(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        logits, recon = self.base.forward_with_reconstruction(x)
        return logits + self.detail(x), recon


def trainable_parameters(module: nn.Module) -> Iterator[nn.Parameter]:
    """The parameters an optimiser should get: those with ``requires_grad`` (all, for these networks)."""
    return (p for p in module.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------------------
# Builders (config fields read with getattr defaults, so any config object works)
# --------------------------------------------------------------------------------------------------


def default_feature_network() -> nn.Module:
    """ImageNet EfficientNet-Lite0 from ``cxr_utils.pretrained``: ``efficientnet_lite0_features()`` if
    defined, else ``efficientnet_lite0(features_only=True)`` where the loader takes that argument (the
    stage maps only: no unused head weights in D's state), else ``efficientnet_lite0()`` (a timm
    model; its intermediates are used).

    Raises:
        ConfigError: that loader is not available.
    """
    try:
        from .. import pretrained  # type: ignore[attr-defined]
    except ImportError as err:
        raise ConfigError("projected discriminator needs cxr_utils.pretrained (ImageNet EfficientNet-Lite0) "
                          "or a feature network passed in") from err
    for name in ("efficientnet_lite0_features", "efficientnet_lite0"):
        loader = getattr(pretrained, name, None)
        if loader is not None:
            if name == "efficientnet_lite0" and "features_only" in inspect.signature(loader).parameters:
                return loader(features_only=True)
            return loader()
    raise ConfigError("cxr_utils.pretrained has neither efficientnet_lite0_features nor efficientnet_lite0")


def build_generator(cfg: Any) -> Generator:
    """The FastGAN generator a config describes (``latent_dim``, ``image_size``, ``channels``,
    ``fastgan_width``, ``fastgan_upsample``; defaults 128, 64, 3, 1.0, "nearest")."""
    return Generator(getattr(cfg, "latent_dim", 128), getattr(cfg, "image_size", 64),
                     getattr(cfg, "channels", 3), getattr(cfg, "fastgan_width", 1.0),
                     upsample=getattr(cfg, "fastgan_upsample", "nearest"))


def build_discriminator(cfg: Any, feature_network: nn.Module | None = None) -> nn.Module:
    """The discriminator ``cfg.d_arch`` names (``scratch`` default, ``projected``, ``hybrid``).

    Reads ``image_size``, ``channels``, ``fastgan_width``, ``feature_size`` (default 128) and
    ``recon_weight`` (the scratch part gets its reconstruction decoder unless it is 0; default: with
    decoder). The projected and hybrid kinds use ``feature_network`` if given, else
    :func:`default_feature_network`. ``detail_head`` (default False) adds a :class:`DetailDiscriminator`
    beside any of them (:class:`WithDetail`).

    Raises:
        ConfigError: unknown ``d_arch`` or any invalid size/width.
    """
    arch = getattr(cfg, "d_arch", "scratch")
    if arch not in D_ARCHS:
        raise ConfigError(f"unknown d_arch {arch!r}; choose from {', '.join(D_ARCHS)}")
    size, channels = getattr(cfg, "image_size", 64), getattr(cfg, "channels", 3)
    width = getattr(cfg, "fastgan_width", 1.0)
    decoder = getattr(cfg, "recon_weight", 1.0) > 0
    scratch = ScratchDiscriminator(size, channels, width, decoder) if arch != "projected" else None
    if arch == "scratch":
        D = scratch
    else:
        net = feature_network if feature_network is not None else default_feature_network()
        projected = ProjectedDiscriminator(net, size, channels, getattr(cfg, "feature_size", 128), width)
        D = projected if arch == "projected" else HybridDiscriminator(scratch, projected)
    return WithDetail(D, DetailDiscriminator(size, channels)) if getattr(cfg, "detail_head", False) else D
