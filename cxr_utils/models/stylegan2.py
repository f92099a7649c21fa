"""StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN") with the
small-data settings of StyleGAN2-ADA (Karras et al. 2020, "Training GANs with Limited Data").

Written from the papers as a plain-PyTorch, CPU-friendly implementation (no custom CUDA ops).

Design choices
--------------
* Equalised learning rate everywhere: weights are stored ~N(0, 1) (divided by ``lr_multiplier``) and
  scaled at run time by ``lr_multiplier / sqrt(fan_in)``, so Adam's per-parameter step is the same for
  every layer.
* Modulated convolution in two mathematically equal forms (``modconv_impl``):
  ``"grouped"`` modulates and demodulates a weight copy per sample and runs one grouped convolution
  (``groups=N``); ``"activation"`` scales the input activations by the style, runs one shared
  convolution and multiplies the output by the per-sample, per-output-channel demodulation
  coefficients. ``"auto"`` picks per device type from :data:`AUTO_MODCONV_IMPL`: ``activation`` on CPU
  (see below), and on devices not measured yet as well.
* Upsampling (synthesis) is bilinear x2 with ``align_corners=False``, which is exactly the separable
  [1, 3, 3, 1] FIR upsampling filter with replicated borders, and it runs on PyTorch's fast
  interpolation kernel. Downsampling (discriminator) is the [1, 3, 3, 1] FIR blur with stride 2 (zero
  padding), applied before the 3x3 convolution of the lower resolution.
* Synthesis uses the skip architecture (toRGB at each resolution, upsampled and summed); the
  discriminator the residual architecture with fromRGB at the top resolution only.
* The minibatch standard deviation layer uses contiguous groups of ``mbstd_group`` samples; when the
  batch is not divisible, the last group is smaller, and a lone remaining sample joins the previous
  group (a group of one has no spread).
* Style mixing draws the crossover point per sample (the paper mixes a percentage of images).

Training
--------
This module holds the networks only. The family's training step (logistic loss, lazy R1 and
path-length regularisation, style mixing) is ``models/stylegan2_loss.StyleGAN2Steps``, exported here as
``Steps`` for the model registry; ``build_generator`` / ``build_discriminator`` read the architecture
from a ``TrainConfig`` (``latent_dim``, ``w_dim``, ``mapping_layers``, ``channel_base``,
``channel_max``, ``mbstd_group``, ``modconv_impl``), whose ``sg2_arch`` preset may set them.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .stylegan2_loss import StyleGAN2Steps as Steps  # noqa: F401  (the family's training step)

ModconvImpl = Literal["grouped", "activation", "auto"]
NoiseMode = Literal["random", "const", "none"]

# CPU (2-core AMD EPYC, one thread, cpu-small at 64 px, benchmarks/bench_stylegan2.py): a full training
# iteration cost 1.02 s of CPU time with the activation form and 1.09 s grouped (fp32; bf16 0.78 vs 0.88).
# Per layer, the grouped form is 3-4x slower at low resolution and many channels (8x8, 128 -> 128) and
# on par at 64x64 with few channels, so wider networks favour the activation form further.
AUTO_MODCONV_IMPL: dict[str, str] = {"cpu": "activation"}

_SQRT2 = math.sqrt(2.0)


# --------------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------------

def ada_auto_preset(image_size: int, devices: int = 1) -> dict[str, Any]:
    """The ADA paper's ``auto`` heuristic: batch, R1 gamma and EMA scaled to resolution and batch."""
    batch = max(min(devices * min(4096 // image_size, 32), 64), devices)
    return dict(
        z_dim=512, w_dim=512, mapping_layers=2,
        channel_base=16384 if image_size < 512 else 32768, channel_max=512,
        mbstd_group=min(batch // devices, 4),
        batch_size=batch, lr=0.002 if image_size >= 1024 else 0.0025, betas=(0.0, 0.99),
        r1_gamma=0.0002 * image_size ** 2 / batch, r1_interval=16,
        pl_weight=2.0, pl_interval=4,
        ema_kimg=batch * 10 / 32, ema_rampup=0.05, style_mixing_prob=0.9,
        augment="bgc", ada_target=0.6, ada_interval=4, ada_kimg=500, ada_p_max=0.8,
    )


STYLEGAN2_PRESETS: dict[str, dict[str, Any]] = {
    # ADA paper "paper256" (one of its reference configs, 8 GPUs x 8 images).
    "paper256": dict(
        z_dim=512, w_dim=512, mapping_layers=8, channel_base=16384, channel_max=512, mbstd_group=8,
        batch_size=64, lr=0.0025, betas=(0.0, 0.99), r1_gamma=1.0, r1_interval=16,
        pl_weight=2.0, pl_interval=4, ema_kimg=20.0, ema_rampup=None, style_mixing_prob=0.9,
        augment="bgc", ada_target=0.6, ada_interval=4, ada_kimg=500, ada_p_max=0.8,
    ),
    "auto64": ada_auto_preset(64),
    "auto128": ada_auto_preset(128),
    "auto256": ada_auto_preset(256),
    # Trains visibly in minutes on 2 CPU cores at 64 px: widths 128-128-128-64-32, 2 mapping layers.
    # gamma and EMA follow the auto heuristic for batch 16; p adapts fast enough for a short run.
    "cpu-small": dict(
        z_dim=128, w_dim=128, mapping_layers=2, channel_base=2048, channel_max=128, mbstd_group=4,
        batch_size=16, lr=0.0025, betas=(0.0, 0.99), r1_gamma=0.0512, r1_interval=16,
        pl_weight=0.0, pl_interval=4, ema_kimg=5.0, ema_rampup=0.05, style_mixing_prob=0.9,
        augment="bgc", ada_target=0.6, ada_interval=4, ada_kimg=20, ada_p_max=0.8,
    ),
    # Smoke tests and notebook test copies only: widths of 16, seconds per kimg.
    "tiny": dict(
        z_dim=16, w_dim=16, mapping_layers=1, channel_base=256, channel_max=16, mbstd_group=4,
        batch_size=8, lr=0.0025, betas=(0.0, 0.99), r1_gamma=0.05, r1_interval=4,
        pl_weight=0.0, pl_interval=4, ema_kimg=0.05, ema_rampup=0.05, style_mixing_prob=0.9,
        augment="bgc", ada_target=0.6, ada_interval=1, ada_kimg=0.5, ada_p_max=0.8,
    ),
}

# --------------------------------------------------------------------------------------------------
# Equalised-learning-rate layers and resampling
# --------------------------------------------------------------------------------------------------

def _lrelu(x: Tensor) -> Tensor:
    """Leaky ReLU with the sqrt(2) gain that keeps activations at unit variance."""
    return F.leaky_relu(x, 0.2) * _SQRT2


def normalize_2nd_moment(x: Tensor, eps: float = 1e-8) -> Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class EqualLinear(nn.Module):
    """Fully connected layer with equalised learning rate (weights scaled at run time)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bias_init: float = 0.0,
                 lr_multiplier: float = 1.0, activation: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), bias_init / lr_multiplier)) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.lr_multiplier = lr_multiplier
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias * self.lr_multiplier if self.bias is not None else None
        x = F.linear(x, self.weight * self.weight_gain, bias)
        return _lrelu(x) if self.activation else x


class EqualConv2d(nn.Module):
    """Convolution with equalised learning rate and 'same' padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size ** 2)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        x = F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.weight.shape[-1] // 2)
        return _lrelu(x) if self.activation else x


def upsample2x(x: Tensor) -> Tensor:
    """x2 upsampling; bilinear with align_corners=False is the [1,3,3,1] FIR with replicated borders."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def downsample2x(x: Tensor) -> Tensor:
    """[1,3,3,1] FIR blur and stride 2 (zero padding), as one depthwise convolution."""
    n, c, h, w = x.shape
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=x.dtype, device=x.device)
    kernel = (taps[:, None] * taps[None, :] / taps.sum() ** 2)[None, None]
    y = F.conv2d(x.reshape(n * c, 1, h, w), kernel, stride=2, padding=1)
    return y.reshape(n, c, h // 2, w // 2)


# --------------------------------------------------------------------------------------------------
# Modulated convolution
# --------------------------------------------------------------------------------------------------

def resolve_modconv_impl(impl: str, device: torch.device) -> str:
    if impl == "auto":
        return AUTO_MODCONV_IMPL.get(device.type, "activation")
    if impl not in ("grouped", "activation"):
        raise ConfigError(f"modconv_impl must be 'grouped', 'activation' or 'auto', got {impl!r}")
    return impl


def modulated_conv2d(x: Tensor, weight: Tensor, styles: Tensor, demodulate: bool = True,
                     impl: str = "activation", eps: float = 1e-8) -> Tensor:
    """Convolve ``x`` (N x I x H x W) with ``weight`` (O x I x k x k) modulated by ``styles`` (N x I).

    ``weight`` must already carry its equalised-learning-rate gain. Demodulation rescales each output
    channel of each sample so that the modulated weight has unit L2 norm over (I, k, k).
    """
    n, i, h, w = x.shape
    o, _, kh, kw = weight.shape
    if impl == "grouped":
        wts = weight[None] * styles[:, None, :, None, None]  # N x O x I x k x k
        if demodulate:
            wts = wts * (wts.square().sum(dim=(2, 3, 4), keepdim=True) + eps).rsqrt()
        out = F.conv2d(x.reshape(1, n * i, h, w), wts.reshape(n * o, i, kh, kw), padding=kh // 2, groups=n)
        return out.reshape(n, o, h, w)
    if impl != "activation":
        raise ValueError(f"unknown modulated convolution form {impl!r}")
    out = F.conv2d(x * styles[:, :, None, None], weight, padding=kh // 2)
    if demodulate:
        # ||w_o * s||^2 = sum_i s_i^2 * sum_k w_oik^2, so the coefficients are one small matmul.
        dcoefs = (styles.square() @ weight.square().sum(dim=(2, 3)).t() + eps).rsqrt()  # N x O
        out = out * dcoefs[:, :, None, None]
    return out


class SynthesisLayer(nn.Module):
    """Modulated, demodulated 3x3 convolution, optional x2 upsampling, noise, bias, leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 up: bool = False, modconv_impl: str = "auto") -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution))
        self.weight_gain = 1.0 / math.sqrt(in_channels * 9)
        self.up = up
        self.resolution = resolution
        self.modconv_impl = modconv_impl

    def forward(self, x: Tensor, w: Tensor, noise_mode: str = "random") -> Tensor:
        styles = self.affine(w)
        if self.up:
            x = upsample2x(x)
        impl = resolve_modconv_impl(self.modconv_impl, x.device)
        x = modulated_conv2d(x, self.weight * self.weight_gain, styles, demodulate=True, impl=impl)
        if noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device, dtype=x.dtype)
            x = x + noise * self.noise_strength
        elif noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        elif noise_mode != "none":
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        return _lrelu(x + self.bias[None, :, None, None])


class ToRGB(nn.Module):
    """Modulated 1x1 convolution to image channels, without demodulation."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, modconv_impl: str = "auto") -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels)
        self.modconv_impl = modconv_impl

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        impl = resolve_modconv_impl(self.modconv_impl, x.device)
        x = modulated_conv2d(x, self.weight * self.weight_gain, self.affine(w), demodulate=False, impl=impl)
        return x + self.bias[None, :, None, None]


# --------------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------------

def _check_size(image_size: int, smallest: int) -> None:
    if image_size < smallest or image_size & (image_size - 1):
        raise ConfigError(f"StyleGAN2 image size must be a power of two >= {smallest}, got {image_size}")


def channel_widths(image_size: int, channel_base: int, channel_max: int) -> dict[int, int]:
    """Feature maps per resolution: min(channel_base / resolution, channel_max), at least 1."""
    resolutions = [2 ** k for k in range(2, int(math.log2(image_size)) + 1)]
    return {r: max(1, min(channel_base // r, channel_max)) for r in resolutions}


class MappingNetwork(nn.Module):
    """z (and optional label c) -> w, broadcast to ``num_ws`` layers; tracks the mean w for truncation."""

    def __init__(self, z_dim: int, w_dim: int, num_ws: int, num_layers: int = 8, c_dim: int = 0,
                 lr_multiplier: float = 0.01, w_avg_beta: float = 0.995) -> None:
        super().__init__()
        if num_layers < 1:
            raise ConfigError(f"mapping_layers must be >= 1, got {num_layers}")
        self.z_dim, self.w_dim, self.c_dim, self.num_ws = z_dim, w_dim, c_dim, num_ws
        self.w_avg_beta = w_avg_beta
        self.embed = EqualLinear(c_dim, w_dim) if c_dim else None
        features = [z_dim + (w_dim if c_dim else 0)] + [w_dim] * num_layers
        self.layers = nn.Sequential(*[
            EqualLinear(a, b, lr_multiplier=lr_multiplier, activation=True)
            for a, b in zip(features[:-1], features[1:])
        ])
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: Tensor, c: Tensor | None = None, *, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_w_avg: bool = False) -> Tensor:
        x = normalize_2nd_moment(z.reshape(z.shape[0], -1).to(torch.float32))
        if self.c_dim:
            if c is None:
                raise ValueError("this generator is conditional: pass labels c (N x c_dim)")
            x = torch.cat([x, normalize_2nd_moment(self.embed(c.to(torch.float32)))], dim=1)
        elif c is not None:
            raise ValueError("this generator is unconditional (c_dim=0) but labels c were given")
        w = self.layers(x)
        if update_w_avg:
            self.w_avg.copy_(w.detach().float().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        ws = w[:, None, :].repeat(1, self.num_ws, 1)
        if truncation_psi != 1.0:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            ws[:, :cutoff] = self.w_avg.lerp(ws[:, :cutoff], truncation_psi)
        return ws


class SynthesisBlock(nn.Module):
    """One resolution: (upsampling conv,) conv, toRGB; the image skip path is upsampled and summed."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 image_channels: int, modconv_impl: str) -> None:
        super().__init__()
        self.resolution = resolution
        if resolution == 4:
            self.const = nn.Parameter(torch.randn(out_channels, 4, 4))
            self.conv0 = None
        else:
            self.const = None
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=True,
                                        modconv_impl=modconv_impl)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, modconv_impl=modconv_impl)
        self.torgb = ToRGB(out_channels, image_channels, w_dim, modconv_impl=modconv_impl)
        self.num_conv = 1 if resolution == 4 else 2

    def forward(self, x: Tensor | None, img: Tensor | None, ws: Tensor, noise_mode: str) -> tuple[Tensor, Tensor]:
        """``ws`` holds num_conv + 1 vectors: one per conv, the last for toRGB (shared with the next conv0)."""
        if self.conv0 is None:
            x = self.const[None].expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, ws[:, 0], noise_mode)
        else:
            x = self.conv0(x, ws[:, 0], noise_mode)
            x = self.conv1(x, ws[:, 1], noise_mode)
        rgb = self.torgb(x, ws[:, self.num_conv])
        img = rgb if img is None else upsample2x(img) + rgb
        return x, img


class SynthesisNetwork(nn.Module):
    """ws (N x num_ws x w_dim) -> image (N x C x H x W), skip architecture from a learned 4x4 constant."""

    def __init__(self, w_dim: int, image_size: int, channels: int, channel_base: int = 16384,
                 channel_max: int = 512, modconv_impl: ModconvImpl = "auto") -> None:
        super().__init__()
        _check_size(image_size, 4)
        resolve_modconv_impl(modconv_impl, torch.device("cpu"))  # validate early
        self.w_dim, self.image_size, self.channels = w_dim, image_size, channels
        widths = channel_widths(image_size, channel_base, channel_max)
        self.blocks = nn.ModuleList(
            SynthesisBlock(widths.get(r // 2, widths[r]), widths[r], w_dim, r, channels, modconv_impl)
            for r in widths
        )
        self.num_ws = sum(b.num_conv for b in self.blocks) + 1

    def forward(self, ws: Tensor, noise_mode: NoiseMode = "random") -> Tensor:
        x = img = None
        index = 0
        for block in self.blocks:
            x, img = block(x, img, ws[:, index:index + block.num_conv + 1], noise_mode)
            index += block.num_conv
        return img


class Generator(nn.Module):
    """Mapping + synthesis. ``G(z)`` returns images roughly in [-1, 1] (no output squashing, as in the paper).

    ``latent_dim`` and ``channels`` use the same names as the DCGAN generator so sampling code is shared;
    ``init_kwargs`` rebuilds the network from a checkpoint.
    """

    def __init__(self, z_dim: int = 512, w_dim: int = 512, image_size: int = 256, channels: int = 3,
                 mapping_layers: int = 8, channel_base: int = 16384, channel_max: int = 512, c_dim: int = 0,
                 modconv_impl: ModconvImpl = "auto") -> None:
        super().__init__()
        self.init_kwargs = dict(z_dim=z_dim, w_dim=w_dim, image_size=image_size, channels=channels,
                                mapping_layers=mapping_layers, channel_base=channel_base,
                                channel_max=channel_max, c_dim=c_dim, modconv_impl=modconv_impl)
        self.z_dim, self.w_dim, self.c_dim = z_dim, w_dim, c_dim
        self.image_size, self.channels = image_size, channels
        self.synthesis = SynthesisNetwork(w_dim, image_size, channels, channel_base, channel_max, modconv_impl)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws, mapping_layers, c_dim)

    @property
    def latent_dim(self) -> int:
        return self.z_dim

    def forward(self, z: Tensor, c: Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, noise_mode: NoiseMode = "random",
                return_ws: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        img = self.synthesis(ws, noise_mode=noise_mode)
        return (img, ws) if return_ws else img

    def mapping_mixed(self, z: Tensor, c: Tensor | None = None, *, mixing_prob: float = 0.0,
                      update_w_avg: bool = False) -> Tensor:
        """Style mixing regularisation: with probability ``mixing_prob`` per sample, the layers from a
        random crossover point on take their w from a second random z."""
        ws = self.mapping(z, c, update_w_avg=update_w_avg)
        if mixing_prob <= 0:
            return ws
        n = z.shape[0]
        cutoff = torch.randint(1, self.num_ws, (n,), device=z.device)
        cutoff = torch.where(torch.rand(n, device=z.device) < mixing_prob, cutoff, self.num_ws)
        second = self.mapping(torch.randn_like(z), c)
        take_second = torch.arange(self.num_ws, device=z.device)[None, :] >= cutoff[:, None]
        return torch.where(take_second[:, :, None], second, ws)


# --------------------------------------------------------------------------------------------------
# Discriminator
# --------------------------------------------------------------------------------------------------

def minibatch_stddev(x: Tensor, group_size: int = 4, num_features: int = 1) -> Tensor:
    """Append the mean standard deviation over groups of samples as ``num_features`` extra channels."""
    n, c, h, w = x.shape
    size = max(1, min(group_size, n))
    group = torch.arange(n, device=x.device) // size
    if n > 1 and n % size == 1:
        group[-1] -= 1  # a lone last sample joins the previous group
    num_groups = int(group[-1]) + 1
    dtype = torch.promote_types(x.dtype, torch.float32)  # statistics in at least fp32
    counts = torch.bincount(group, minlength=num_groups).to(dtype)[:, None, None, None, None]
    y = x.to(dtype).reshape(n, num_features, c // num_features, h, w)
    zeros = y.new_zeros(num_groups, *y.shape[1:])
    mean = zeros.index_add(0, group, y) / counts
    var = zeros.index_add(0, group, (y - mean[group]).square()) / counts
    std = (var + 1e-8).sqrt().mean(dim=(2, 3, 4))  # groups x features
    stat = std[group][:, :, None, None].expand(n, num_features, h, w).to(x.dtype)
    return torch.cat([x, stat], dim=1)


class DiscriminatorBlock(nn.Module):
    """Residual block: conv, [1,3,3,1] downsample, conv; skip = downsample + 1x1 conv; sum / sqrt(2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3, activation=True)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, activation=True)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        skip = self.skip(downsample2x(x))
        x = self.conv1(downsample2x(self.conv0(x)))
        return (x + skip) * math.sqrt(0.5)


class Discriminator(nn.Module):
    """Residual discriminator: fromRGB at the top, blocks down to 4x4, minibatch stddev, conv, fc, logit.

    With ``c_dim > 0`` the logit is a projection onto an embedding of the label (conditional D).
    """

    def __init__(self, image_size: int = 256, channels: int = 3, channel_base: int = 16384,
                 channel_max: int = 512, c_dim: int = 0, mbstd_group: int = 4, mbstd_features: int = 1) -> None:
        super().__init__()
        _check_size(image_size, 8)
        self.init_kwargs = dict(image_size=image_size, channels=channels, channel_base=channel_base,
                                channel_max=channel_max, c_dim=c_dim, mbstd_group=mbstd_group,
                                mbstd_features=mbstd_features)
        self.image_size, self.channels, self.c_dim = image_size, channels, c_dim
        self.mbstd_group, self.mbstd_features = mbstd_group, mbstd_features
        widths = channel_widths(image_size, channel_base, channel_max)
        self.from_rgb = EqualConv2d(channels, widths[image_size], 1, activation=True)
        self.blocks = nn.Sequential(*[
            DiscriminatorBlock(widths[r], widths[r // 2]) for r in sorted(widths, reverse=True) if r > 4
        ])
        c4 = widths[4]
        if c4 % mbstd_features:
            raise ConfigError(f"mbstd_features ({mbstd_features}) must divide the 4x4 width ({c4})")
        self.conv = EqualConv2d(c4 + mbstd_features, c4, 3, activation=True)
        self.fc = EqualLinear(c4 * 16, c4, activation=True)
        self.out = EqualLinear(c4, c4 if c_dim else 1)
        self.embed = EqualLinear(c_dim, c4) if c_dim else None

    def forward(self, img: Tensor, c: Tensor | None = None) -> Tensor:
        """Logits, shape N x 1."""
        x = self.blocks(self.from_rgb(img))
        x = minibatch_stddev(x, self.mbstd_group, self.mbstd_features)
        x = self.out(self.fc(self.conv(x).flatten(1)))
        if self.embed is None:
            if c is not None:
                raise ValueError("this discriminator is unconditional (c_dim=0) but labels c were given")
            return x
        if c is None:
            raise ValueError("this discriminator is conditional: pass labels c (N x c_dim)")
        cmap = normalize_2nd_moment(self.embed(c.to(x.dtype)))
        return (x * cmap).sum(dim=1, keepdim=True) / math.sqrt(cmap.shape[1])


# --------------------------------------------------------------------------------------------------
# Construction from a TrainConfig (the model registry's interface)
# --------------------------------------------------------------------------------------------------

def build_generator(cfg: Any) -> Generator:
    """G for a ``TrainConfig`` with ``model="stylegan2"``: its architecture fields only."""
    return Generator(z_dim=cfg.latent_dim, w_dim=cfg.w_dim, image_size=cfg.image_size, channels=cfg.channels,
                     mapping_layers=cfg.mapping_layers, channel_base=cfg.channel_base,
                     channel_max=cfg.channel_max, modconv_impl=cfg.modconv_impl)


def build_discriminator(cfg: Any) -> Discriminator:
    return Discriminator(image_size=cfg.image_size, channels=cfg.channels, channel_base=cfg.channel_base,
                         channel_max=cfg.channel_max, mbstd_group=cfg.mbstd_group)
