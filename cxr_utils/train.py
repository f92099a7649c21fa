"""The one GAN training loop, shared by every model family, with resumable run folders.

``train(cfg, out_dir)`` keeps the whole data set as one in-memory tensor (decoded once, shuffled per
epoch by a seeded generator, last partial batch dropped), asks the model family's ``GANSteps`` for a D
step and a G step per iteration, and writes the run folder described in ``docs/architecture.md``.
A ``training-state.pt`` checkpoint holds everything the loop depends on (weights, optimisers, EMA,
augmentation state, every RNG, the data-order generator, counters), so an interrupted run resumed with
``resume=True`` ends bit-identical to an uninterrupted one on the same machine.

History rows (``stats.jsonl``, one per iteration; ``history.csv``): ``iteration``, ``epoch``, ``kimg``,
``time_s`` (training wall time), ``loss_D``, ``loss_G``, ``D_x``, ``D_G_z1`` (fakes scored in the D step,
before D's update), ``D_G_z2`` (the same fakes in the G step, after it) -- D outputs as probabilities,
named as in pytorch/examples -- and with augmentation ``augment_p`` and ``augment_rt`` (ADA's r_t).
With ``n_dis > 1`` the G columns are empty on iterations without a G step.

Data parallel: launched by ``torchrun --nproc_per_node=K -m cxr_utils train ...`` the same loop runs in
K processes (NCCL on CUDA, each process on ``cuda:LOCAL_RANK``; gloo on CPU). ``batch_size`` stays the
global batch: every process uses the same seeded permutation and takes its contiguous 1/K of each batch,
draws the latents of the whole batch from the same RNG state and keeps its own share, and the gradients
are averaged over processes before every optimiser step (``distributed.average_gradients``; the networks
are not wrapped in ``DistributedDataParallel``, whose double-backward support StyleGAN2's lazy
regularisers would need). So K processes compute what one process does, except BatchNorm: its batch
statistics are per process (over batch_size / K images) unless ``sync_batchnorm`` converts G and D to
``SyncBatchNorm`` (CUDA only; on CPU it is a ConfigError). Initial weights are identical (same seed, then
rank 0's broadcast), every global RNG stays identical across processes, and the logged stats are
averaged over processes once per epoch. Only rank 0 writes the run folder (options, history, grids,
checkpoints, figures) and prints; every rank resumes from the checkpoint rank 0 wrote, which must be
readable by every process (a shared file system when several nodes train).

``python -m cxr_utils train --preset lungcancer-dcgan --out results/RUN [--resume] [--FIELD VALUE ...]``
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import config as C
from . import device as dev
from . import distributed, runs
from .errors import ConfigError, RunError
from .models import MODELS, build_discriminator, build_generator, family
from .models.stylegan2 import STYLEGAN2_PRESETS
from .paths import project_path


@dataclass
class TrainConfig:
    """Everything that defines a training run; defaults are Reference A (the `lungcancer-dcgan` preset)."""

    model: str = C.option("dcgan", f"model family: {' | '.join(MODELS)}")
    source: str = C.option("phantom", "data source for data.load (folder, medmnist:<flag>, phantom[:N])")
    classes: tuple[str, ...] | None = C.option(None, "train on these classes only (comma-separated); None = all")
    image_size: int = C.option(64, "square image size, a power of two >= 16")
    channels: int = C.option(3, "1 = grayscale, 3 = grayscale replicated to RGB (the references)")
    latent_dim: int = C.option(128, "size of the latent vector z")
    base: int = C.option(64, "network width: channels of the highest-resolution layer")
    batch_size: int = C.option(128, "images per D step (the global batch: split over torchrun's processes)")
    epochs: int = C.option(25, "passes over the data set")
    kimg: float | None = C.option(None, "budget in thousands of real images shown; overrides epochs (rounded up)")
    time_budget_s: float | None = C.option(None, "also stop at the end of the first epoch at which the training "
                                                 "time (summed over resumed segments) reaches this many seconds")
    lr_g: float = C.option(2e-4, "generator Adam learning rate")
    lr_d: float = C.option(2e-4, "discriminator Adam learning rate (lr_d > lr_g = TTUR)")
    beta1: float = C.option(0.5, "Adam beta1")
    beta2: float = C.option(0.999, "Adam beta2")
    loss: Literal["bce", "ns", "hinge"] = C.option("bce", "bce (reference), ns (softplus form) or hinge")
    label_smoothing: float = C.option(0.0, "one-sided: real target 1 - this (bce only)")
    spectral_norm: bool = C.option(False, "spectral normalisation on every D conv")
    d_batchnorm: bool = C.option(True, "BatchNorm in D (the reference has it)")
    ema_kimg: float = C.option(0.0, "half-life of the EMA of G weights in kimg; 0 = no EMA")
    ema_rampup: float | None = C.option(None, "cap the EMA half-life at this fraction of the images seen "
                                              "(StyleGAN2's ramp-up); None = a fixed half-life")
    augment: Literal["none", "diffaug", "ada"] = C.option("none", "differentiable augmentation of D inputs")
    augment_p: float = C.option(0.0, "augmentation probability (fixed for diffaug, initial for ada)")
    ada_target: float = C.option(0.6, "ADA target for E[sign(D(real))]")
    ada_interval: int = C.option(4, "ADA adjusts p every this many D steps")
    ada_kimg: float = C.option(500.0, "ADA speed: p can move from 0 to 1 in this many kimg")
    ada_p_max: float = C.option(0.8, "cap on ADA's p (the official code has none)")
    sg2_arch: str = C.option("cpu-small", "StyleGAN2 widths, mapping depth, mbstd group: a models.stylegan2 preset")
    r1_gamma: float = C.option(0.0, "R1 penalty weight (StyleGAN2; lazy, every r1_interval D steps)")
    r1_interval: int = C.option(16, "D steps between lazy R1 steps")
    pl_weight: float = C.option(0.0, "path-length regularisation weight (StyleGAN2); 0 = off")
    style_mixing: float = C.option(0.0, "style-mixing probability (StyleGAN2)")
    n_dis: int = C.option(1, "D steps per G step")
    sync_batchnorm: bool = C.option(False, "under torchrun: BatchNorm statistics over all processes (CUDA only)")
    seed: int = C.option(0, "seeds weights, latents, data order and augmentation (not the data itself)")
    precision: Literal["auto", "fp32", "bf16"] = C.option("auto", "auto: bf16 autocast where measured faster")
    channels_last: bool | Literal["auto"] = C.option("auto", "channels-last memory format (auto: where faster)")
    compile: bool = C.option(False, "torch.compile the G and D forwards")
    device: str = C.option("auto", "auto | cpu | cuda[:i]")
    sample_every: int = C.option(1, "write a fixed-noise sample grid every N epochs")
    checkpoint_every: int = C.option(5, "write training-state.pt every N epochs (and at the end)")
    grid_epochs: tuple[int, ...] = C.option((1, 10, 25), "epochs whose sample grids are always written")
    n_fixed: int = C.option(64, "number of fixed latents for the sample grids")
    max_images: int | None = C.option(None, "cap on the data set size (a fixed random subset)")
    num_data: int | None = C.option(None, "phantom size when source is plain 'phantom'")

    def validate(self) -> None:
        rules = [
            (self.model in MODELS, f"model must be one of {list(MODELS)}"),
            (self.image_size >= 16 and self.image_size & (self.image_size - 1) == 0,
             "image_size must be a power of two >= 16"),
            (self.channels in (1, 3), "channels must be 1 or 3"),
            (min(self.latent_dim, self.base, self.batch_size, self.epochs, self.n_dis, self.n_fixed) >= 1,
             "latent_dim, base, batch_size, epochs, n_dis and n_fixed must be >= 1"),
            (self.kimg is None or self.kimg > 0, "kimg must be > 0"),
            (self.time_budget_s is None or self.time_budget_s > 0, "time_budget_s must be > 0"),
            (self.lr_g > 0 and self.lr_d > 0, "learning rates must be > 0"),
            (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "Adam betas must be in [0, 1)"),
            (0 <= self.label_smoothing < 0.5, "label_smoothing must be in [0, 0.5)"),
            (self.label_smoothing == 0 or self.loss == "bce", "label_smoothing needs loss='bce'"),
            (self.ema_kimg >= 0, "ema_kimg must be >= 0"),
            (self.ema_rampup is None or self.ema_rampup > 0, "ema_rampup must be > 0 or None"),
            (self.ada_interval >= 1 and self.ada_kimg > 0 and 0 <= self.ada_p_max <= 1,
             "ada_interval >= 1, ada_kimg > 0, ada_p_max in [0, 1]"),
            (self.r1_gamma >= 0 and self.r1_interval >= 1 and self.pl_weight >= 0 and 0 <= self.style_mixing <= 1,
             "r1_gamma >= 0, r1_interval >= 1, pl_weight >= 0, style_mixing in [0, 1]"),
            (self.model != "stylegan2" or self.sg2_arch in STYLEGAN2_PRESETS,
             f"sg2_arch must be one of {list(STYLEGAN2_PRESETS)}"),
            (self.model != "stylegan2" or self.loss == "ns", "stylegan2 trains with loss='ns' (logistic)"),
            (self.model != "stylegan2" or not self.compile, "compile is wired for dcgan only"),
            (0 <= self.augment_p <= 1 and 0 < self.ada_target < 1, "augment_p in [0, 1], ada_target in (0, 1)"),
            (self.sample_every >= 1 and self.checkpoint_every >= 1, "sample_every, checkpoint_every >= 1"),
            (all(e >= 1 for e in self.grid_epochs), "grid_epochs must be >= 1"),
            (self.max_images is None or self.max_images >= 1, "max_images must be >= 1"),
            (self.num_data is None or self.num_data >= 1, "num_data must be >= 1"),
        ]
        for ok, message in rules:
            if not ok:
                raise ConfigError(message)


PRESETS: dict[str, dict[str, Any]] = {
    # Reference A to the letter. The reference trained on its Cancer class only; on the phantom every
    # class is used by default (pass classes=... to restrict).
    "lungcancer-dcgan": dict(model="dcgan", image_size=64, channels=3, latent_dim=128, base=64,
                             batch_size=128, epochs=25, lr_g=2e-4, lr_d=2e-4, beta1=0.5, beta2=0.999,
                             loss="bce", spectral_norm=False, d_batchnorm=True, ema_kimg=0.0,
                             augment="none", n_dis=1, grid_epochs=(1, 10, 25)),
    # Reference B: the same family, batch 64, 200 epochs (noise and mode collapse reported after 80-120).
    "kermany-dcgan": dict(model="dcgan", image_size=64, channels=3, latent_dim=128, base=64,
                          batch_size=64, epochs=200, lr_g=2e-4, lr_d=2e-4, beta1=0.5, beta2=0.999,
                          loss="bce", spectral_norm=False, d_batchnorm=True, ema_kimg=0.0,
                          augment="none", n_dis=1, checkpoint_every=10, sample_every=2,
                          grid_epochs=(1, 40, 80, 120, 160, 200)),
    # Stabilised DCGAN: every ingredient is its own field so each can be ablated.
    "stable": dict(model="dcgan", image_size=64, channels=3, latent_dim=128, base=64,
                   batch_size=128, epochs=25, lr_g=1e-4, lr_d=4e-4, beta1=0.5, beta2=0.999,
                   loss="hinge", spectral_norm=True, d_batchnorm=False, ema_kimg=2.0, ema_rampup=0.05,
                   augment="diffaug", augment_p=0.3, n_dis=1, grid_epochs=(1, 10, 25)),
}



def _stylegan2_preset(arch: str, image_size: int, kimg: float) -> dict[str, Any]:
    """A StyleGAN2-ADA preset of models.stylegan2 as TrainConfig values (one lr for G and D, as there)."""
    p = STYLEGAN2_PRESETS[arch]
    return dict(model="stylegan2", sg2_arch=arch, image_size=image_size, channels=3, latent_dim=p["z_dim"],
                batch_size=p["batch_size"], kimg=kimg, lr_g=p["lr"], lr_d=p["lr"], beta1=p["betas"][0],
                beta2=p["betas"][1], loss="ns", spectral_norm=False, d_batchnorm=False,
                ema_kimg=p["ema_kimg"], ema_rampup=p["ema_rampup"], augment="ada", augment_p=0.0,
                ada_target=p["ada_target"], ada_interval=p["ada_interval"], ada_kimg=p["ada_kimg"],
                ada_p_max=p["ada_p_max"], r1_gamma=p["r1_gamma"], r1_interval=p["r1_interval"],
                pl_weight=p["pl_weight"], style_mixing=p["style_mixing_prob"], n_dis=1)


# StyleGAN2-ADA: `--model stylegan2 --preset cpu-small` finds "stylegan2-cpu-small".
PRESETS |= {
    "stylegan2-cpu-small": _stylegan2_preset("cpu-small", 64, kimg=10),
    "stylegan2-auto64": _stylegan2_preset("auto64", 64, kimg=1000),
    "stylegan2-auto128": _stylegan2_preset("auto128", 128, kimg=1000),
    "stylegan2-auto256": _stylegan2_preset("auto256", 256, kimg=1000),
    "stylegan2-paper256": _stylegan2_preset("paper256", 256, kimg=1000),
}

# Fields that may differ when a run is resumed: they extend or observe training, never change it.
RESUMABLE_CHANGES = frozenset({"epochs", "kimg", "time_budget_s", "checkpoint_every", "sample_every", "grid_epochs",
                               "device", "compile"})


def make_config(preset: str | None = None, **overrides: Any) -> TrainConfig:
    """A preset plus overrides (Python values or CLI strings), validated.

    A preset may be named without its model prefix when ``model`` is given (``model="stylegan2",
    preset="cpu-small"``); ``model="stylegan2"`` alone starts from ``stylegan2-cpu-small``.
    """
    model = overrides.get("model")
    if model and model != "dcgan":
        if preset is None:
            preset = f"{model}-cpu-small"
        elif preset not in PRESETS and f"{model}-{preset}" in PRESETS:
            preset = f"{model}-{preset}"
    return C.from_preset(TrainConfig, PRESETS, preset, overrides)


# -------------------------------------------------------------------------------------- augmentation


def get_augment(cfg: TrainConfig) -> nn.Module | None:
    """The D-input augmentation ``cfg`` asks for (``augment.AdaptiveAugment``), or None.

    "diffaug" is the DiffAugment policy (brightness, contrast, saturation, translation, cutout) at the
    fixed probability ``augment_p``; "ada" is the full ADA pipeline whose p adapts towards
    ``ada_target``. It is applied to real and fake images alike, so G learns through it.
    """
    if cfg.augment == "none":
        return None
    from . import augment

    return augment.from_train_config(cfg)


# ------------------------------------------------------------------------------------ losses and steps


def d_loss(kind: str, real: torch.Tensor, fake: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Discriminator loss on fp32 logits. ``bce`` is the reference's BCE(sigmoid) with targets 1/0,
    computed from logits for stability; ``ns`` is the same loss in softplus form (StyleGAN's)."""
    if kind == "bce":
        return (F.binary_cross_entropy_with_logits(real, torch.full_like(real, 1.0 - smoothing))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    if kind == "ns":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    raise ConfigError(f"unknown loss {kind!r}")


def g_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    """Generator loss on fp32 logits: fakes labelled real (bce/ns), or -D(G(z)) (hinge)."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    if kind == "ns":
        return F.softplus(-fake).mean()
    if kind == "hinge":
        return -fake.mean()
    raise ConfigError(f"unknown loss {kind!r}")


class GANSteps:
    """How one iteration updates D and G. Families with other losses or regularisers subclass it.

    As in the reference, the G step reuses the fakes of the preceding D step (now scored by the updated
    D). Stats come back as detached 0-dim tensors, so the loop never waits on the device per iteration.
    Logits leave autocast before any loss, so losses are always fp32.

    Under torchrun ``real`` is this process's share of the global batch; the latents are drawn for the
    whole global batch and sliced the same way (``rank_aware``), and gradients are averaged over the
    processes before each optimiser step.
    """

    rank_aware = True  # draws its latents per global batch; other families get a private RNG per rank

    def __init__(self, G: nn.Module, D: nn.Module, cfg: TrainConfig, device: torch.device,
                 amp_dtype: torch.dtype | None, augment: Any = None):
        self.G, self.D, self.cfg, self.device, self.amp_dtype = G, D, cfg, device, amp_dtype
        self.augment = augment if augment is not None else (lambda x: x)
        self.measures_reals = hasattr(augment, "update")  # ADA's r_t = E[sign(D(real))]
        self.g_forward = torch.compile(G) if cfg.compile else G
        d_logits = getattr(D, "logits", D)
        self.d_forward = torch.compile(d_logits) if cfg.compile else d_logits
        self.opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
        self.opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
        self._fake: torch.Tensor | None = None
        self.dist = distributed.info()

    def autocast(self):
        return dev.autocast(self.device, self.amp_dtype)

    def latents(self, n: int) -> torch.Tensor:
        """z for this process's ``n`` samples: the whole global batch's latents, drawn from the same RNG
        state on every process (so exactly what one process would draw), sliced like the real batch."""
        k, rank = self.dist.world_size, self.dist.rank
        z = torch.randn(n * k, self.G.latent_dim, device=self.device)
        return z[distributed.batch_slice(n * k, rank, k)] if k > 1 else z

    def d_step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.latents(real.shape[0])
        with self.autocast():
            self._fake = self.g_forward(z)
            real_logits = self.d_forward(self.augment(real)).float()
            fake_logits = self.d_forward(self.augment(self._fake.detach())).float()
        loss = d_loss(self.cfg.loss, real_logits, fake_logits, self.cfg.label_smoothing)
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(self.D)
        self.opt_d.step()
        if self.measures_reals:
            self.augment.update(real_logits.detach())
        return {"loss_D": loss.detach(), "D_x": torch.sigmoid(real_logits.detach()).mean(),
                "D_G_z1": torch.sigmoid(fake_logits.detach()).mean()}

    def g_step(self) -> dict[str, torch.Tensor]:
        fake, self._fake = self._fake, None
        self.D.requires_grad_(False)
        with self.autocast():
            logits = self.d_forward(self.augment(fake)).float()
        loss = g_loss(self.cfg.loss, logits)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(self.G)
        self.opt_g.step()
        self.D.requires_grad_(True)
        return {"loss_G": loss.detach(), "D_G_z2": torch.sigmoid(logits.detach()).mean()}

    @torch.no_grad()
    def render(self, G: nn.Module, z: torch.Tensor) -> torch.Tensor:
        """Images of the fixed latents for the progress grids, rendered as the reference does: in
        training mode, BatchNorm using the statistics of this batch. (Early on the running statistics
        still hold their initial values and eval-mode images come out washed-out gray.) Running
        statistics are left as they were: the forward updates copies."""
        was_training = G.training
        G.train()
        buffers = {name: b.clone() for name, b in G.named_buffers()}
        out = torch.func.functional_call(G, buffers, (z,))
        G.train(was_training)
        return out.float()

    def state_dict(self) -> dict[str, Any]:
        return {"G": self.G.state_dict(), "D": self.D.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])


@torch.no_grad()
def ema_update(ema: nn.Module, G: nn.Module, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * G for weights; buffers (BatchNorm statistics) copied."""
    for pe, p in zip(ema.parameters(), G.parameters()):
        pe.lerp_(p, 1.0 - beta)
    for be, b in zip(ema.buffers(), G.buffers()):
        be.copy_(b)


def ema_beta(cfg: TrainConfig, images_seen: int) -> float:
    """Per-step decay giving a half-life of ``ema_kimg`` thousand images at this batch size.

    With ``ema_rampup`` the half-life is at most ``ema_rampup * images_seen`` (StyleGAN2's ramp-up), so
    early in training the average follows G closely instead of holding on to the random initial weights.
    """
    if cfg.ema_kimg <= 0:
        return 0.0
    half_life = cfg.ema_kimg * 1000.0
    if cfg.ema_rampup:
        half_life = min(half_life, images_seen * cfg.ema_rampup)
    return 0.5 ** (cfg.batch_size / half_life) if half_life > 0 else 0.0


# ---------------------------------------------------------------------------------- data and folders


def training_images(cfg: TrainConfig, images: torch.Tensor | None = None, progress: bool = True) -> torch.Tensor:
    """The training set as one float32 (N, C, S, S) tensor in [-1, 1]: ``images`` or ``data.load``.

    The data never depend on ``cfg.seed`` (the phantom is rendered with its default seed, the
    ``max_images`` subset is fixed), so runs that differ only in seed see the same images."""
    if images is None:
        from .data import load

        source = f"phantom:{cfg.num_data}" if cfg.source == "phantom" and cfg.num_data else cfg.source
        classes = list(cfg.classes) if cfg.classes else None
        images = load(source, image_size=cfg.image_size, channels=cfg.channels, classes=classes,
                      progress=progress).images
    expected = (cfg.channels, cfg.image_size, cfg.image_size)
    if images.dim() != 4 or tuple(images.shape[1:]) != expected:
        raise ConfigError(f"training images have shape {tuple(images.shape)}, config expects (N, *{expected})")
    images = images.float()
    if cfg.max_images and len(images) > cfg.max_images:
        keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
        images = images[keep[: cfg.max_images].sort().values]
    if len(images) < cfg.batch_size:
        raise ConfigError(f"batch_size {cfg.batch_size} is larger than the data set ({len(images)} images)")
    return images.contiguous()


def _fingerprint(images: torch.Tensor) -> str:
    return hashlib.blake2b(images.cpu().numpy().tobytes(), digest_size=16).hexdigest()


def open_run_dir(run_dir: Path, cfg: TrainConfig, resume: bool, overwrite: bool) -> None:
    """Refuse to train into an existing run unless resuming (compatibly) or overwriting it."""
    if resume and overwrite:
        raise ConfigError("resume and overwrite exclude each other")
    options = run_dir / runs.OPTIONS
    if options.exists() and resume:
        if not (run_dir / runs.STATE).exists():
            raise RunError(f"cannot resume {run_dir}: it has no {runs.STATE}")
        saved = C.to_dict(C.load_json(TrainConfig, options))
        given = C.to_dict(cfg)
        changed = [f"{k}: {saved[k]!r} -> {given[k]!r}" for k in given
                   if k not in RESUMABLE_CHANGES and given[k] != saved[k]]
        if changed:
            raise ConfigError(f"resume would change training: {'; '.join(changed)}")
        for torn in run_dir.glob(".*.tmp"):  # left by a kill during atomic_save; never the checkpoint
            torn.unlink()
    elif options.exists() and overwrite:
        n_files = sum(1 for p in run_dir.rglob("*") if p.is_file())
        print(f"overwrite=True: deleting the previous run {run_dir} ({n_files} files)")
        shutil.rmtree(run_dir)
    elif options.exists():
        raise RunError(f"{run_dir} already holds a run; resume it (--resume) or replace it (--overwrite)")
    elif resume:
        raise RunError(f"nothing to resume: {run_dir} holds no run ({runs.OPTIONS} missing)")
    (run_dir / runs.SAMPLES).mkdir(parents=True, exist_ok=True)


def _own_cuda_device(device: torch.device | None) -> bool:
    """Under torchrun on CUDA each process touches only its own GPU's RNG (not every GPU's)."""
    return device is not None and device.type == "cuda" and distributed.info().enabled


def _rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Every global RNG, in types that load with ``torch.load(weights_only=True)``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    cuda: list[torch.Tensor] = []
    if torch.cuda.is_available():
        cuda = [torch.cuda.get_rng_state(device)] if _own_cuda_device(device) else torch.cuda.get_rng_state_all()
    return {"torch": torch.get_rng_state(), "cuda": cuda,
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": random.getstate()}


def _set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        if _own_cuda_device(device):
            torch.cuda.set_rng_state(state["cuda"][0], device)  # every rank's stream is rank 0's
        else:
            torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def read_history(run_dir: Path, n: int | None = None) -> list[dict[str, Any]]:
    """The first ``n`` rows of ``stats.jsonl`` (all when None); a torn last line is ignored."""
    path = run_dir / runs.STATS
    rows: list[dict[str, Any]] = []
    if path.exists():
        for line in path.read_text().splitlines():
            if n is not None and len(rows) >= n:
                break
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def _write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """stats.jsonl rewritten to exactly ``history`` (on resume), and history.csv."""
    with open(run_dir / runs.STATS, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in history)
    _write_csv(run_dir, history)


def _write_csv(run_dir: Path, history: list[dict[str, Any]]) -> None:
    keys = list(dict.fromkeys(k for r in history for k in r))
    with open(run_dir / runs.HISTORY, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)




def _save_grid(images: torch.Tensor, path: Path) -> None:
    from .plots import save_grid  # matplotlib is imported only once a grid is due

    save_grid(images.cpu(), path, nrow=8)


# ---------------------------------------------------------------------------------------------- loop


@dataclass
class RunResult:
    """What a finished ``train`` call hands back (everything is also in the run folder)."""

    run_dir: Path
    config: TrainConfig
    G: nn.Module  # the EMA generator when kept, else G; eval mode
    history: list[dict[str, Any]]
    epochs: int
    kimg: float
    seconds: float


@dataclass
class _Counters:
    epoch: int = 0  # epochs completed
    iteration: int = 0  # D steps completed
    images: int = 0  # real images shown to D
    seconds: float = 0.0  # training wall time, summed over resumed segments


@dataclass
class _Parts:
    """Everything stateful the loop owns besides the history, as a checkpoint stores it."""

    steps: GANSteps
    G_ema: nn.Module | None
    augment: nn.Module | None
    order: torch.Generator  # the per-epoch data permutation
    count: _Counters

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps.state_dict(),
                "G_ema": self.G_ema.state_dict() if self.G_ema is not None else None,
                "augment": self.augment.state_dict() if self.augment is not None else None,
                "order": self.order.get_state(), "rng": _rng_state(self.steps.device),
                "counters": dataclasses.asdict(self.count)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps.load_state_dict(state["steps"])
        if self.G_ema is not None:
            self.G_ema.load_state_dict(state["G_ema"])
        if self.augment is not None:
            self.augment.load_state_dict(state["augment"])
        self.order.set_state(state["order"])
        _set_rng_state(state["rng"], self.steps.device)
        self.count = _Counters(**state["counters"])


def _check_world(cfg: TrainConfig, world: distributed.DistInfo, device: torch.device) -> None:
    """What a torchrun launch with ``world.world_size`` processes needs from the config."""
    if cfg.batch_size % world.world_size:
        raise ConfigError(f"batch_size {cfg.batch_size} (the global batch) is not divisible by the "
                          f"{world.world_size} processes torchrun started")
    if cfg.sync_batchnorm and world.enabled and device.type != "cuda":
        raise ConfigError("sync_batchnorm needs CUDA (torch's SyncBatchNorm has no CPU implementation); "
                          "drop --sync-batchnorm to keep per-process BatchNorm statistics on CPU")


def _build(cfg: TrainConfig, device: torch.device, amp_dtype: torch.dtype | None, fmt: torch.memory_format) -> _Parts:
    """Seeded models, optimisers, EMA copy and augmentation, placed on ``device``.

    Under torchrun every process builds the same weights (same seed; rank 0's are broadcast as well),
    G and D get SyncBatchNorm when ``sync_batchnorm`` is set (the EMA copy keeps plain BatchNorm), and
    the step object is built with this process's share of the batch.
    """
    world = distributed.info()
    _seed_everything(cfg.seed)
    G = build_generator(cfg).to(device, memory_format=fmt).train()
    D = build_discriminator(cfg).to(device, memory_format=fmt).train()
    distributed.broadcast_module(G)
    distributed.broadcast_module(D)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False) if cfg.ema_kimg > 0 else None
    if cfg.sync_batchnorm and world.enabled:
        G, D = nn.SyncBatchNorm.convert_sync_batchnorm(G), nn.SyncBatchNorm.convert_sync_batchnorm(D)
    augment = get_augment(cfg)
    augment = augment.to(device) if augment is not None else None
    step_cfg = dataclasses.replace(cfg, batch_size=cfg.batch_size // world.world_size) if world.enabled else cfg
    steps = getattr(family(cfg.model), "Steps", GANSteps)(G, D, step_cfg, device, amp_dtype, augment)
    return _Parts(steps, G_ema, augment, torch.Generator().manual_seed(cfg.seed), _Counters())


@contextlib.contextmanager
def _private_rng(steps: Any, cfg: TrainConfig, iteration: int, phase: int) -> Any:
    """Under torchrun, run a step of a family whose steps draw their own latents (not ``rank_aware``)
    from a random stream of this process's own, seeded by (seed, iteration, rank), so the processes'
    fakes differ; the global RNG, identical on every process and checkpointed, is left as it was. A
    no-op in one process and for ``GANSteps``."""
    world = distributed.info()
    if not world.enabled or getattr(steps, "rank_aware", False):
        yield
        return
    device = steps.device
    seed = ((cfg.seed * 1_000_003 + iteration) * 4 + phase) * world.world_size + world.rank
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(seed)
        yield


def train(cfg: TrainConfig, out_dir: str | Path, images: torch.Tensor | None = None, resume: bool = False,
          overwrite: bool = False, progress: bool = True) -> RunResult:
    """Train ``cfg.model`` into the run folder ``out_dir`` (see the module docstring).

    Under torchrun every process calls this with the same arguments (the launcher does that for the
    CLI); each returns a RunResult, but only rank 0 writes the run folder.
    """
    cfg.validate()
    run_dir = project_path(out_dir)
    device = dev.pick_device(cfg.device)
    world = distributed.init(device)
    if world.enabled and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    _check_world(cfg, world, device)
    main = world.is_main
    distributed.run_on_main(lambda: open_run_dir(run_dir, cfg, resume, overwrite))
    amp_dtype = dev.resolve_precision(cfg.precision, device)
    channels_last = dev.resolve_channels_last(cfg.channels_last, device, amp_dtype)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    dev.enable_fast_math(device)
    data = distributed.main_first(lambda: training_images(cfg, images, progress and main))  # rank 0 fills the cache
    fingerprint = _fingerprint(data)
    if not distributed.same_on_all_ranks(fingerprint):
        raise ConfigError("the processes were given different training images")
    per_epoch = len(data) // cfg.batch_size
    local = distributed.batch_slice(cfg.batch_size, world.rank, world.world_size)
    epochs = math.ceil(cfg.kimg * 1000 / (per_epoch * cfg.batch_size)) if cfg.kimg else cfg.epochs
    parts = _build(cfg, device, amp_dtype, fmt)
    steps, G, G_ema, augment, count = parts.steps, parts.steps.G, parts.G_ema, parts.augment, parts.count
    history: list[dict[str, Any]] = []
    if resume:
        state = torch.load(run_dir / runs.STATE, map_location=device, weights_only=True)
        if state["data"] != fingerprint:
            raise RunError(f"cannot resume {run_dir}: the training images differ from the saved run's")
        saved_world = state.get("world_size", 1)
        if saved_world != world.world_size and not getattr(steps, "rank_aware", False):
            raise ConfigError(f"cannot resume this {cfg.model} run with {world.world_size} processes: it was "
                              f"trained with {saved_world} (its step counters are per process)")
        parts.load_state_dict(state)
        count, history = parts.count, read_history(run_dir, state["history_len"])
        distributed.barrier()  # every process has read the history before rank 0 rewrites it
        if main:
            _write_history(run_dir, history)
    if main:
        C.save_json(cfg, run_dir / runs.OPTIONS)
        processes = f", {world.world_size} processes ({world.backend})" if world.enabled else ""
        print(f"training {cfg.model} on {len(data)} images, {per_epoch} iterations/epoch, epochs "
              f"{count.epoch + 1}..{epochs} -> {run_dir}\n  {dev.describe(device, amp_dtype, channels_last)}"
              f"{processes}")
    fixed_z = torch.randn(cfg.n_fixed, cfg.latent_dim, generator=torch.Generator().manual_seed(cfg.seed + 1))
    fixed_z, data = fixed_z.to(device), data.to(device)
    if cfg.time_budget_s is not None and count.seconds >= cfg.time_budget_s:
        epochs = count.epoch  # resumed with its time already spent: nothing more to train
    bar = tqdm(total=epochs * per_epoch, initial=count.iteration, disable=not (progress and main), unit="it")
    start = time.perf_counter() - count.seconds
    with open(run_dir / runs.STATS, "a") if main else contextlib.nullcontext() as stats_file:
        for epoch in range(count.epoch + 1, epochs + 1):
            perm = torch.randperm(len(data), generator=parts.order).to(device)
            pending = []
            for batch in perm[: per_epoch * cfg.batch_size].view(per_epoch, cfg.batch_size):
                with _private_rng(steps, cfg, count.iteration, 0):
                    stats = steps.d_step(data[batch[local]].contiguous(memory_format=fmt))
                if (count.iteration + 1) % cfg.n_dis == 0:
                    with _private_rng(steps, cfg, count.iteration, 1):
                        stats |= steps.g_step()
                    if G_ema is not None:
                        ema_update(G_ema, G, ema_beta(cfg, count.images))
                count.iteration += 1
                count.images += cfg.batch_size
                meta = {"iteration": count.iteration, "epoch": epoch, "kimg": count.images / 1000,
                        "time_s": round(time.perf_counter() - start, 3)}
                if augment is not None:
                    meta["augment_p"] = augment.p
                    meta["augment_rt"] = None if math.isnan(augment.r_t) else augment.r_t
                pending.append((meta, stats))
                bar.update()
                if main and (count.iteration % 10 == 0 or count.iteration == 1):
                    bar.set_postfix({k: f"{v.item():.3f}" for k, v in stats.items()}, refresh=False)
            rows = _rows(pending)
            if main:
                stats_file.writelines(json.dumps(r) + "\n" for r in rows)
                stats_file.flush()
            history += rows
            count.epoch, count.seconds = epoch, time.perf_counter() - start
            # every process must agree to stop (their clocks differ slightly): stop when any is out of time
            out_of_time = cfg.time_budget_s is not None and bool(distributed.all_reduce_sum(
                torch.tensor(float(count.seconds >= cfg.time_budget_s))) > 0)
            last = epoch == epochs or out_of_time
            if epoch % cfg.sample_every == 0 or epoch in cfg.grid_epochs or last:
                # rendered on every process: with SyncBatchNorm the forward is a collective
                grid = steps.render(G_ema if G_ema is not None else G, fixed_z)
                if main:
                    _save_grid(grid, run_dir / runs.SAMPLES / f"epoch_{epoch:03d}.png")
            if epoch % cfg.checkpoint_every == 0 or last:
                if main:
                    os.fsync(stats_file.fileno())  # the rows a checkpoint counts must outlive a crash
                    _checkpoint(run_dir, cfg, parts, len(history), fingerprint)
                    _write_csv(run_dir, history)
                distributed.barrier()  # nobody runs ahead of (or resumes from) a half-written checkpoint
            if out_of_time:
                break
    bar.close()
    result = _finish(run_dir, cfg, G_ema if G_ema is not None else G, history, count, write=main)
    distributed.barrier()  # when train() returns on any process, the run folder is complete
    return result


def _checkpoint(run_dir: Path, cfg: TrainConfig, parts: _Parts, history_len: int, fingerprint: str) -> None:
    """The resumable state, then the inference weights; each file replaced atomically."""
    state = {**parts.state_dict(), "history_len": history_len, "data": fingerprint, "config": C.to_dict(cfg),
             "world_size": distributed.info().world_size}
    runs.atomic_save(state, run_dir / runs.STATE)
    kimg = parts.count.images / 1000
    payload = runs.network_payload(cfg, parts.steps.G, parts.G_ema, kimg, parts.count.epoch)
    runs.atomic_save(payload, run_dir / runs.NETWORK_SNAPSHOT)


_STAT_KEYS = ("loss_D", "loss_G", "D_x", "D_G_z1", "D_G_z2")


def _rows(pending: list[tuple[dict[str, Any], dict[str, torch.Tensor]]]) -> list[dict[str, Any]]:
    """History rows of one epoch; device values fetched in one transfer. A stat missing on an
    iteration (a skipped G step, a lazy regulariser not due) -> None. Family-specific stats (R1,
    path length) follow the shared ones. Under torchrun the values are averaged over the processes
    (one all-reduce per epoch); they are means over equal shares, so this gives the global batch's."""
    if not pending:
        return []
    keys = list(dict.fromkeys([*_STAT_KEYS, *(k for _, s in pending for k in s)]))
    nan = torch.tensor(float("nan"), device=pending[0][1]["loss_D"].device)
    values = torch.stack([torch.stack([s.get(k, nan).float() for k in keys]) for _, s in pending])
    values = distributed.all_reduce_mean(values).tolist()
    return [{**meta, **{k: (None if math.isnan(v) else v) for k, v in zip(keys, vals)}}
            for (meta, _), vals in zip(pending, values)]


def _finish(run_dir: Path, cfg: TrainConfig, G: nn.Module, history: list[dict[str, Any]],
            count: _Counters, write: bool = True) -> RunResult:
    """Final weights, history.csv and the figures (when ``write``: rank 0 under torchrun); also run
    when a resumed run had nothing left to do."""
    if not write:
        return RunResult(run_dir, cfg, G.eval(), history, count.epoch, count.images / 1000, count.seconds)
    from . import plots

    payload = torch.load(run_dir / runs.NETWORK_SNAPSHOT, map_location="cpu", weights_only=True)
    runs.atomic_save(payload, run_dir / runs.NETWORK_FINAL)
    _write_csv(run_dir, history)
    if history:
        plots.training_losses(history, run_dir / "losses.png")
        plots.training_scores(history, run_dir / "scores.png")
        if any(r.get("augment_p") is not None for r in history):
            plots.augment_probability(history, run_dir / "augment.png", cfg.ada_target if cfg.augment == "ada" else None)
    frames = sorted((run_dir / runs.SAMPLES).glob("epoch_*.png"))
    if frames:
        plots.save_progress_gif(frames, run_dir / "progress.gif")
    kimg = count.images / 1000
    rate = count.images / count.seconds if count.seconds else float("nan")
    print(f"done: {count.epoch} epochs, {count.iteration} iterations, {kimg:.1f} kimg, "
          f"{count.seconds:.0f} s ({rate:.0f} img/s) -> {run_dir}")
    return RunResult(run_dir, cfg, G.eval(), history, count.epoch, kimg, count.seconds)


# ----------------------------------------------------------------------------------------------- CLI


def cli_add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default=None, metavar="NAME",
                        help=f"starting point: {', '.join(PRESETS)} (with --model stylegan2 the prefix may be "
                             "dropped; default: the saved config when resuming, else TrainConfig defaults)")
    parser.add_argument("--out", required=True, help="run folder, e.g. results/RUN")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing run in --out first")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    C.add_arguments(parser, TrainConfig)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """CLI flags over the preset; when resuming without --preset, over the run's saved config."""
    overrides = C.overrides_from_args(args, TrainConfig)
    options = project_path(args.out) / runs.OPTIONS
    if args.resume and args.preset is None and options.exists():
        return C.apply_overrides(C.load_json(TrainConfig, options), overrides)
    return make_config(args.preset, **overrides)


def cli_run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    try:
        train(cfg, args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    finally:
        distributed.cleanup()  # under torchrun: leave the process group cleanly
    return 0
