"""Adaptive discriminator augmentation (ADA; Karras et al. 2020, "Training Generative Adversarial
Networks with Limited Data"), also usable with a fixed probability as DiffAugment-style augmentation.

Every image the discriminator sees, real or fake, goes through the same differentiable pipeline, so
the generator is trained through it and learns the clean distribution as long as the augmentations do
not "leak". Each operation is applied to each sample independently with probability ``p``:

* geometric (one affine matrix per sample, applied with a single ``grid_sample``, bilinear, reflection
  padding): x-flip, 90-degree rotations, integer translation, isotropic scaling, arbitrary rotation
  (before and after the anisotropic scaling, each with probability 1 - sqrt(1 - p) so that some
  rotation happens with probability p), anisotropic scaling, fractional translation;
* colour: brightness, contrast, luma flip, hue rotation, saturation. For one-channel images hue and
  saturation are skipped (gray has no chroma) and the luma flip is an intensity inversion (x -> -x in
  [-1, 1]). For three channels all five run; on gray-replicated RGB, hue and saturation are exact no-ops
  because gray lies on their rotation axis, so no gray detection is needed;
* cutout (optional): a square of half the image size set to 0 (mid-gray).

Strengths follow the ADA paper's ``bgc`` pipeline: integer translation up to 0.125 of the image,
scales 2^N(0, 0.2), rotations uniform over the full circle, fractional translation N(0, 0.125), brightness
N(0, 0.2), contrast 2^N(0, 0.5), hue uniform over the full circle, saturation 2^N(0, 1).
Simplification: the geometric warp is plain bilinear sampling without the paper's 2x supersampling and
anti-aliasing filters (cheaper; some aliasing when an image is shrunk).

Adaptation (``mode="ada"``): ``update(real_logits)`` accumulates sign(D(real)); every ``interval``
minibatches r_t = E[sign(D(real))] and p moves by sign(r_t - target) * images / (kimg * 1000), clamped
to [0, p_max]. Under torchrun the signs are summed over all ranks before r_t is measured, so p stays
identical on every rank (the random augmentation draws themselves need not be). Unlike the official
code p is capped (default 0.8): the ADA paper shows that augmentations start to leak into the generated
images as p approaches 1, and ~0.8 is where the leaking begins for the bgc pipeline. ``mode="fixed"``
keeps p constant (r_t is still measured for logging). At p = 0 the pipeline returns its input unchanged
(no resampling).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import distributed
from .errors import ConfigError

GEOMETRIC_OPS = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
COLOR_OPS = ("brightness", "contrast", "lumaflip", "hue", "saturation")
ALL_OPS = GEOMETRIC_OPS + COLOR_OPS + ("cutout",)

PIPELINES: dict[str, tuple[str, ...]] = {
    "bgc": GEOMETRIC_OPS + COLOR_OPS,  # the ADA paper's default
    "bg": GEOMETRIC_OPS,
    "bgc-cutout": GEOMETRIC_OPS + COLOR_OPS + ("cutout",),
    # DiffAugment's colour + translation + cutout policy, with the ADA strengths.
    "diffaugment": ("brightness", "contrast", "saturation", "xint", "cutout"),
    # DiffAugment for radiographs (FastGAN's default): translation, cutout, brightness and contrast.
    # No flips or rotations (anatomy is lateralised: the heart sits left), no hue or saturation (gray
    # has no chroma), no luma flip (an inverted radiograph is not a radiograph).
    "radiograph": ("xint", "cutout", "brightness", "contrast"),
}

DEFAULT_STRENGTHS: dict[str, float] = dict(
    xint_max=0.125, scale_std=0.2, rotate_max=1.0, aniso_std=0.2, xfrac_std=0.125,
    brightness_std=0.2, contrast_std=0.5, hue_max=1.0, saturation_std=1.0, cutout_size=0.5,
)

_LUMA = torch.tensor([1.0, 1.0, 1.0]) / math.sqrt(3.0)  # the ADA paper's luma axis
_LUMA_CROSS = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3.0)  # [v]x


# ---------------------------------------------------------------------------------- matrix helpers

def _eye(n: int, size: int, device: torch.device) -> Tensor:
    return torch.eye(size, device=device).repeat(n, 1, 1)


def _scale2d(sx: Tensor, sy: Tensor) -> Tensor:
    m = _eye(sx.shape[0], 3, sx.device)
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    return m


def _translate2d(tx: Tensor, ty: Tensor) -> Tensor:
    m = _eye(tx.shape[0], 3, tx.device)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def _rotate2d(cos: Tensor, sin: Tensor) -> Tensor:
    m = _eye(cos.shape[0], 3, cos.device)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = cos, -sin, sin, cos
    return m


def _color_matrix(linear: Tensor, offset: Tensor | None = None) -> Tensor:
    """4x4 homogeneous colour transform from a per-sample 3x3 part (and 3-vector offset)."""
    m = _eye(linear.shape[0], 4, linear.device)
    m[:, :3, :3] = linear
    if offset is not None:
        m[:, :3, 3] = offset
    return m


# ------------------------------------------------------------------------------------- the module

class AdaptiveAugment(nn.Module):
    """Differentiable D-input augmentation with one probability ``p`` (adaptive or fixed)."""

    def __init__(self, pipeline: str | Sequence[str] = "bgc", mode: str = "ada", p: float = 0.0,
                 target: float = 0.6, interval: int = 4, kimg: float = 500.0, p_max: float = 0.8,
                 **strengths: float) -> None:
        super().__init__()
        ops = PIPELINES.get(pipeline) if isinstance(pipeline, str) else tuple(pipeline)
        if ops is None:
            raise ConfigError(f"unknown augmentation pipeline {pipeline!r}; choose from {', '.join(PIPELINES)}")
        unknown = sorted(set(ops) - set(ALL_OPS))
        if unknown:
            raise ConfigError(f"unknown augmentation op(s) {unknown}; known: {', '.join(ALL_OPS)}")
        bad = sorted(set(strengths) - set(DEFAULT_STRENGTHS))
        if bad:
            raise ConfigError(f"unknown augmentation strength(s) {bad}; known: {', '.join(DEFAULT_STRENGTHS)}")
        if mode not in ("ada", "fixed"):
            raise ConfigError(f"augmentation mode must be 'ada' or 'fixed', got {mode!r}")
        if not 0.0 <= p <= 1.0 or not 0.0 <= p_max <= 1.0:
            raise ConfigError(f"augmentation p and p_max must be in [0, 1], got p={p}, p_max={p_max}")
        if interval < 1 or kimg <= 0:
            raise ConfigError(f"ADA interval must be >= 1 and kimg > 0, got {interval} and {kimg}")
        self.ops = frozenset(ops)
        self.mode, self.target, self.interval, self.kimg, self.p_max = mode, target, interval, kimg, p_max
        self.strength = {**DEFAULT_STRENGTHS, **strengths}
        # float64: p moves in many tiny steps, and resuming must restore it exactly.
        self.register_buffer("aug_p", torch.tensor(float(p), dtype=torch.float64))
        self.register_buffer("sign_sum", torch.zeros([], dtype=torch.float64))
        self.register_buffer("sign_count", torch.zeros([], dtype=torch.float64))
        self.register_buffer("batches", torch.zeros([], dtype=torch.int64))
        self.register_buffer("last_rt", torch.tensor(float("nan"), dtype=torch.float64))

    def extra_repr(self) -> str:
        return f"mode={self.mode}, p={self.p:.4f}, ops={sorted(self.ops)}"

    @property
    def p(self) -> float:
        return float(self.aug_p)

    @p.setter
    def p(self, value: float) -> None:
        self.aug_p.fill_(float(value))

    @property
    def r_t(self) -> float:
        """The last measured E[sign(D(real))] (NaN before the first ``interval`` minibatches)."""
        return float(self.last_rt)

    # ------------------------------------------------------------------------------- adaptation

    @torch.no_grad()
    def update(self, real_logits: Tensor) -> None:
        """Accumulate sign(D(real)); every ``interval`` calls, measure r_t and (ADA) adjust p.

        Under torchrun each call sums the signs over every rank's reals (one small all-reduce), so the
        accumulators, r_t and p are the same on every rank at every step, and a checkpoint taken by
        rank 0 between two measurements resumes exactly on all ranks.
        """
        signs = real_logits.detach().float().sign()
        batch = torch.stack([signs.sum(), signs.new_tensor(signs.numel())]).to(self.sign_sum)
        batch = distributed.all_reduce_sum(batch)  # a no-op in one process
        self.sign_sum += batch[0]
        self.sign_count += batch[1]
        self.batches += 1
        if int(self.batches) < self.interval:
            return
        rt = self.sign_sum / self.sign_count
        self.last_rt.copy_(rt)
        if self.mode == "ada":
            step = torch.sign(rt - self.target) * self.sign_count / (self.kimg * 1000.0)
            self.aug_p.copy_((self.aug_p + step).clamp(0.0, self.p_max))
        self.sign_sum.zero_()
        self.sign_count.zero_()
        self.batches.zero_()

    # --------------------------------------------------------------------------------- forward

    def forward(self, x: Tensor) -> Tensor:
        p = self.p
        if p <= 0.0:
            return x
        n, c, h, w = x.shape
        theta = self._geometric(n, p, h, w, x.device)
        if theta is not None:
            x = _warp(x, theta)
        if self.ops & set(COLOR_OPS):
            x = self._color(x, p)
        if "cutout" in self.ops:
            x = self._cutout(x, p)
        return x

    def _chosen(self, n: int, prob: float, device: torch.device) -> Tensor:
        """Per-sample Bernoulli(prob) as 0/1 floats: which samples get an operation."""
        return (torch.rand(n, device=device) < prob).float()

    def _gaussian(self, n: int, std: float, prob: float, device: torch.device) -> Tensor:
        """N(0, std^2) for the chosen samples, 0 for the others (2^0 = 1 for the log-normal ops)."""
        return torch.randn(n, device=device) * std * self._chosen(n, prob, device)

    def _rotation(self, n: int, prob: float, device: torch.device) -> Tensor:
        angle = (torch.rand(n, device=device) * 2 - 1) * math.pi * self.strength["rotate_max"]
        angle = angle * self._chosen(n, prob, device)
        return _rotate2d(angle.cos(), angle.sin())

    def _geometric(self, n: int, p: float, h: int, w: int, device: torch.device) -> Tensor | None:
        """Per-sample 3x3 matrices mapping output to input coordinates in [-1, 1]; None if all identity.

        Every distribution here is symmetric, so drawing the inverse transform directly is equivalent.
        Rotations assume square images (normalised coordinates).
        """
        ops, s = self.ops, self.strength
        m = _eye(n, 3, device)
        if "xflip" in ops:
            flip = torch.randint(2, (n,), device=device) * self._chosen(n, p, device)
            m = m @ _scale2d(1 - 2 * flip, torch.ones_like(flip))
        if "rotate90" in ops:
            quarter = torch.randint(4, (n,), device=device) * self._chosen(n, p, device).long()
            cos = torch.tensor([1.0, 0.0, -1.0, 0.0], device=device)[quarter]  # exact, unlike cos(pi/2)
            sin = torch.tensor([0.0, 1.0, 0.0, -1.0], device=device)[quarter]
            m = m @ _rotate2d(cos, sin)
        if "xint" in ops:
            t = (torch.rand(n, 2, device=device) * 2 - 1) * s["xint_max"] * self._chosen(n, p, device)[:, None]
            size = torch.tensor([w, h], device=device, dtype=t.dtype)
            t = torch.round(t * size) * 2 / size  # whole pixels, in normalised units
            m = m @ _translate2d(t[:, 0], t[:, 1])
        if "scale" in ops:
            sc = torch.exp2(self._gaussian(n, s["scale_std"], p, device))
            m = m @ _scale2d(sc, sc)
        p_rot = 1 - math.sqrt(1 - p)
        if "rotate" in ops:
            m = m @ self._rotation(n, p_rot, device)
        if "aniso" in ops:
            sc = torch.exp2(self._gaussian(n, s["aniso_std"], p, device))
            m = m @ _scale2d(sc, 1 / sc)
        if "rotate" in ops:
            m = m @ self._rotation(n, p_rot, device)
        if "xfrac" in ops:
            t = torch.randn(n, 2, device=device) * s["xfrac_std"] * self._chosen(n, p, device)[:, None]
            m = m @ _translate2d(2 * t[:, 0], 2 * t[:, 1])
        return None if torch.equal(m, _eye(n, 3, device)) else m

    def _color(self, x: Tensor, p: float) -> Tensor:
        n, c = x.shape[:2]
        ops, s, dev = self.ops, self.strength, x.device
        zero = torch.zeros(n, device=dev)
        bright = self._gaussian(n, s["brightness_std"], p, dev) if "brightness" in ops else zero
        contrast = torch.exp2(self._gaussian(n, s["contrast_std"], p, dev) if "contrast" in ops else zero)
        flip = torch.randint(2, (n,), device=dev) * self._chosen(n, p, dev) if "lumaflip" in ops else zero
        if c != 3:
            # Intensity images: x -> (x + b) * contrast, then inverted where the luma flip hit.
            scale = (contrast * (1 - 2 * flip)).to(x.dtype)[:, None, None, None]
            return (x + bright.to(x.dtype)[:, None, None, None]) * scale
        v = _LUMA.to(dev)
        vv = torch.outer(v, v)
        eye = torch.eye(3, device=dev)
        m = _color_matrix(eye.repeat(n, 1, 1), bright[:, None].repeat(1, 3))
        m = _color_matrix(eye * contrast[:, None, None]) @ m
        m = _color_matrix(eye - 2 * vv * flip[:, None, None]) @ m
        if "hue" in ops:
            angle = (torch.rand(n, device=dev) * 2 - 1) * math.pi * s["hue_max"] * self._chosen(n, p, dev)
            cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
            rotation = cos * eye + sin * _LUMA_CROSS.to(dev) + (1 - cos) * vv  # Rodrigues, about the luma axis
            m = _color_matrix(rotation) @ m
        if "saturation" in ops:
            sat = torch.exp2(self._gaussian(n, s["saturation_std"], p, dev))
            m = _color_matrix(vv + (eye - vv) * sat[:, None, None]) @ m
        # Element-wise sums rather than a matmul, so autocast cannot round the images to bf16.
        m = m.to(x.dtype)
        out = (m[:, :3, :3, None, None] * x[:, None, :, :, :]).sum(dim=2)
        return out + m[:, :3, 3, None, None]

    def _cutout(self, x: Tensor, p: float) -> Tensor:
        n, _, h, w = x.shape
        dev = x.device
        center = torch.rand(n, 2, device=dev)
        half = self.strength["cutout_size"] / 2
        xs = (torch.arange(w, device=dev) + 0.5) / w
        ys = (torch.arange(h, device=dev) + 0.5) / h
        inside_x = (xs[None, :] - center[:, 0:1]).abs() < half
        inside_y = (ys[None, :] - center[:, 1:2]).abs() < half
        hole = inside_y[:, :, None] & inside_x[:, None, :] & (self._chosen(n, p, dev) > 0)[:, None, None]
        return x * (~hole)[:, None].to(x.dtype)


def _warp(x: Tensor, theta: Tensor) -> Tensor:
    """Resample only the samples whose matrix is not the identity (the others stay bit-exact)."""
    moved = (theta != torch.eye(3, device=theta.device)).flatten(1).any(dim=1).nonzero().flatten()
    grid = F.affine_grid(theta[moved, :2, :].to(torch.float32), [len(moved), *x.shape[1:]], align_corners=False)
    warped = F.grid_sample(x[moved].float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return x.index_copy(0, moved, warped.to(x.dtype))


def from_train_config(cfg: Any) -> AdaptiveAugment:
    """The pipeline a training config asks for: ``augment`` is "diffaug" (fixed p) or "ada".

    Reads ``augment_p`` and ``ada_target``, and when present ``augment_pipeline`` (a ``PIPELINES`` name;
    None or absent: ``diffaugment`` for diffaug, ``bgc`` for ada), ``ada_interval``, ``ada_kimg`` and
    ``ada_p_max``.
    """
    if cfg.augment not in ("diffaug", "ada"):
        raise ConfigError(f"augment must be 'diffaug' or 'ada' to build a pipeline, got {cfg.augment!r}")
    fixed = cfg.augment == "diffaug"
    return AdaptiveAugment(
        pipeline=getattr(cfg, "augment_pipeline", None) or ("diffaugment" if fixed else "bgc"),
        mode="fixed" if fixed else "ada", p=cfg.augment_p, target=cfg.ada_target,
        interval=getattr(cfg, "ada_interval", 4), kimg=getattr(cfg, "ada_kimg", 500),
        p_max=getattr(cfg, "ada_p_max", 0.8),
    )
