"""What defines a training run: ``TrainConfig``, the named presets, and building one from CLI flags.

``make_config(preset, **overrides)`` is the way in (a preset plus Python values or CLI strings,
validated); ``PRESETS`` holds the DCGAN references, the stabilised recipe, the StyleGAN2-ADA
configurations and FastGAN's (``fastgan-cpu``, ``fastgan-projected-gpu``); ``RESUMABLE_CHANGES``
names the fields a resumed run may change. StyleGAN2's architecture (``w_dim``, ``mapping_layers``,
``channel_base``, ``channel_max``, ``mbstd_group``) lives here as plain fields, which is all the
networks read; ``sg2_arch`` names the ``STYLEGAN2_PRESETS``
entry that sets them (``--sg2-arch tiny`` resets all five unless they are given as well).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

from . import ada
from . import config as C
from .errors import ConfigError
from .models import MODELS
from .models.stylegan2 import STYLEGAN2_PRESETS
from .paths import project_path

# The StyleGAN2 architecture fields a ``STYLEGAN2_PRESETS`` entry (``sg2_arch``) sets.
SG2_ARCH_FIELDS = ("w_dim", "mapping_layers", "channel_base", "channel_max", "mbstd_group")


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
    time_budget_s: float | None = C.option(None, "also stop after the first iteration at which the training time "
                                                 "(summed over resumed segments, scoring excluded) reaches this "
                                                 "many seconds; that epoch ends early")
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
    sg2_arch: str = C.option("cpu-small", "StyleGAN2 architecture preset (models.stylegan2.STYLEGAN2_PRESETS): "
                                          "sets the five fields below")
    w_dim: int = C.option(128, "StyleGAN2 width of w (the mapping network's output)")
    mapping_layers: int = C.option(2, "StyleGAN2 mapping network depth")
    channel_base: int = C.option(2048, "StyleGAN2 feature maps at resolution r: min(channel_base / r, channel_max)")
    channel_max: int = C.option(128, "StyleGAN2 cap on feature maps per resolution")
    mbstd_group: int = C.option(4, "StyleGAN2 minibatch-stddev group size")
    modconv_impl: Literal["auto", "activation", "grouped"] = C.option("auto", "StyleGAN2 modulated convolution form")
    r1_gamma: float = C.option(0.0, "R1 penalty weight (StyleGAN2; lazy, every r1_interval D steps)")
    r1_interval: int = C.option(16, "D steps between lazy R1 steps")
    pl_weight: float = C.option(0.0, "path-length regularisation weight (StyleGAN2); 0 = off")
    style_mixing: float = C.option(0.0, "style-mixing probability (StyleGAN2)")
    # FastGAN (models/fastgan.py, models/fastgan_loss.py)
    fastgan_width: float = C.option(1.0, "FastGAN width multiplier on the generator and scratch-D channel tables")
    d_arch: Literal["scratch", "projected", "hybrid"] = C.option(
        "scratch", "FastGAN discriminator: scratch (multi-scale SN heads), projected (frozen EfficientNet-Lite0 "
                   "features) or hybrid (both)")
    feature_size: int = C.option(128, "FastGAN projected D: images are resized to this side for EfficientNet-Lite0")
    recon_weight: float = C.option(0.0, "FastGAN scratch D: weight of the L1 reconstruction loss; 0 = off")
    fastgan_upsample: Literal["nearest", "bilinear"] = C.option(
        "nearest", "FastGAN generator's x2 upsampling: nearest (the paper's) or bilinear (a fixed low-pass)")
    detail_head: bool = C.option(False, "FastGAN: add a pixel-detail patch discriminator (image + Laplacian, "
                                        "18 px receptive field) beside d_arch's heads")
    augment_pipeline: str | None = C.option(None, "ada.PIPELINES name (e.g. radiograph); None: diffaugment for "
                                                  "diffaug, bgc for ada")
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
    holdout_fraction: float = C.option(0.0, "keep this share of the source apart, never trained on (a fixed "
                                            "split, patient-disjoint, stratified by class): evaluate's real "
                                            "reference for the run; 0 = train on everything (the references)")
    # Best-checkpoint scoring (metrics.CheckpointScorer): KID of the EMA generator on fixed latents
    # against a fixed real subset, every score_every_kimg; the lowest is kept as network-best.pt.
    score_every_kimg: float = C.option(0.0, "score the (EMA) generator by KID every this many kimg and keep "
                                            "network-best.pt; 0 = off")
    score_extractor: Literal["offline", "inception"] = C.option("offline", "features for the checkpoint KID: "
                                                                "offline (fast statistics) or inception")
    score_n: int = C.option(500, "generated and real images per checkpoint score")

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
            (min(self.w_dim, self.mapping_layers, self.channel_base, self.channel_max, self.mbstd_group) >= 1,
             "w_dim, mapping_layers, channel_base, channel_max and mbstd_group must be >= 1"),
            (self.model != "stylegan2" or self.loss == "ns", "stylegan2 trains with loss='ns' (logistic)"),
            (self.model != "stylegan2" or not self.compile, "compile is wired for dcgan only"),
            (0 <= self.augment_p <= 1 and 0 < self.ada_target < 1, "augment_p in [0, 1], ada_target in (0, 1)"),
            (self.augment_pipeline is None or self.augment_pipeline in ada.PIPELINES,
             f"augment_pipeline must be one of {list(ada.PIPELINES)} or None"),
            (self.model != "fastgan" or self.image_size in (64, 128, 256), "fastgan image_size must be 64, 128 or 256"),
            (self.model != "fastgan" or self.loss == "hinge", "fastgan trains with loss='hinge'"),
            (self.model != "fastgan" or not self.compile, "compile is wired for dcgan only"),
            (self.fastgan_width > 0, "fastgan_width must be > 0"),
            (self.d_arch in ("scratch", "projected", "hybrid"), "d_arch must be scratch, projected or hybrid"),
            (self.feature_size >= 32, "feature_size must be >= 32"),
            (self.recon_weight >= 0, "recon_weight must be >= 0"),
            (self.model == "fastgan" or not self.detail_head, "detail_head is a FastGAN option (model fastgan)"),
            (self.fastgan_upsample in ("nearest", "bilinear"), "fastgan_upsample must be nearest or bilinear"),
            (self.model != "fastgan" or self.recon_weight == 0 or self.d_arch != "projected",
             "recon_weight > 0 needs a scratch part: d_arch scratch or hybrid (or recon_weight 0)"),
            (self.sample_every >= 1 and self.checkpoint_every >= 1, "sample_every, checkpoint_every >= 1"),
            (all(e >= 1 for e in self.grid_epochs), "grid_epochs must be >= 1"),
            (self.max_images is None or self.max_images >= 1, "max_images must be >= 1"),
            (self.num_data is None or self.num_data >= 1, "num_data must be >= 1"),
            (0 <= self.holdout_fraction < 1, "holdout_fraction must be in [0, 1)"),
            (self.score_every_kimg >= 0, f"score_every_kimg must be >= 0 (0 = off), got {self.score_every_kimg}"),
            (self.score_n >= 2, f"score_n must be >= 2, got {self.score_n}"),
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
                   augment="diffaug", augment_p=0.3, n_dis=1, grid_epochs=(1, 10, 25),
                   # KID of the EMA generator every 2 kimg (24 scores in 25 epochs of phantom:2000), the best
                   # kept as network-best.pt: measured about +3% on the training time at that size on CPU
                   score_every_kimg=2.0),
}



def _arch_fields(arch: str) -> dict[str, Any]:
    """The architecture fields a StyleGAN2 preset of models.stylegan2 sets."""
    if arch not in STYLEGAN2_PRESETS:
        raise ConfigError(f"sg2_arch must be one of {list(STYLEGAN2_PRESETS)}, got {arch!r}")
    return {k: STYLEGAN2_PRESETS[arch][k] for k in SG2_ARCH_FIELDS}


def stylegan2_preset(arch: str, image_size: int, kimg: float) -> dict[str, Any]:
    """A StyleGAN2-ADA preset of models.stylegan2 as TrainConfig values (one lr for G and D, as there)."""
    p = STYLEGAN2_PRESETS[arch]
    return dict(model="stylegan2", sg2_arch=arch, **_arch_fields(arch), image_size=image_size, channels=3,
                latent_dim=p["z_dim"],
                batch_size=p["batch_size"], kimg=kimg, lr_g=p["lr"], lr_d=p["lr"], beta1=p["betas"][0],
                beta2=p["betas"][1], loss="ns", spectral_norm=False, d_batchnorm=False,
                ema_kimg=p["ema_kimg"], ema_rampup=p["ema_rampup"], augment="ada", augment_p=0.0,
                ada_target=p["ada_target"], ada_interval=p["ada_interval"], ada_kimg=p["ada_kimg"],
                ada_p_max=p["ada_p_max"], r1_gamma=p["r1_gamma"], r1_interval=p["r1_interval"],
                pl_weight=p["pl_weight"], style_mixing=p["style_mixing_prob"], n_dis=1)


# StyleGAN2-ADA: `--model stylegan2 --preset cpu-small` finds "stylegan2-cpu-small".
PRESETS |= {
    "stylegan2-cpu-small": stylegan2_preset("cpu-small", 64, kimg=10),
    "stylegan2-auto64": stylegan2_preset("auto64", 64, kimg=1000),
    "stylegan2-auto128": stylegan2_preset("auto128", 128, kimg=1000),
    "stylegan2-auto256": stylegan2_preset("auto256", 256, kimg=1000),
    "stylegan2-paper256": stylegan2_preset("paper256", 256, kimg=1000),
}

def fastgan_preset(**values: Any) -> dict[str, Any]:
    """A FastGAN preset as TrainConfig values: FastGAN's optimiser (Adam 2e-4 for G and D, betas
    (0.5, 0.999)), hinge loss, the EMA of G with ramp-up, and the radiograph DiffAugment pipeline at a
    fixed p; ``values`` set the size, width, discriminator and budget."""
    return dict(model="fastgan", lr_g=2e-4, lr_d=2e-4, beta1=0.5, beta2=0.999, loss="hinge",
                spectral_norm=False, d_batchnorm=False, augment="diffaug", augment_pipeline="radiograph",
                n_dis=1, **values)


# FastGAN: `--model fastgan --preset cpu` finds "fastgan-cpu" (chosen by measurement, see
# benchmarks/README.md), `--preset projected-gpu` finds "fastgan-projected-gpu".
PRESETS |= {
    "fastgan-cpu": fastgan_preset(image_size=64, channels=1, latent_dim=128, fastgan_width=0.5, d_arch="projected",
                                  feature_size=64, recon_weight=0.0, batch_size=16, kimg=20, ema_kimg=1.0,
                                  ema_rampup=0.05, augment_p=0.5, grid_epochs=(1,), score_every_kimg=2.0),
    "fastgan-projected-gpu": fastgan_preset(image_size=256, channels=1, latent_dim=256, fastgan_width=1.0,
                                            d_arch="projected", feature_size=224, recon_weight=0.0, batch_size=32,
                                            kimg=500, ema_kimg=10.0, ema_rampup=0.05, augment_p=1.0,
                                            checkpoint_every=10, grid_epochs=(1,)),
}

# Where `make_config(model=...)` starts when no preset is named.
DEFAULT_PRESETS = {"stylegan2": "stylegan2-cpu-small", "fastgan": "fastgan-cpu"}

# The run folder's saved config (runs.OPTIONS names the same file; runs imports this module).
OPTIONS = "training_options.json"

# Fields that may differ when a run is resumed: they extend or observe training, never change it
# (score_every_kimg only schedules the scorer; score_n and score_extractor define it, so they stay).
RESUMABLE_CHANGES = frozenset({"epochs", "kimg", "time_budget_s", "checkpoint_every", "sample_every", "grid_epochs",
                               "device", "compile", "score_every_kimg"})


@C.typed_keywords
def make_config(preset: str | None = None, **overrides: Any) -> TrainConfig:
    """A preset plus overrides (Python values or CLI strings), validated.

    A preset may be named without its model prefix when ``model`` is given (``model="stylegan2",
    preset="cpu-small"``; ``model="fastgan", preset="cpu"``); ``model="stylegan2"`` alone starts from
    ``stylegan2-cpu-small``, ``model="fastgan"`` from ``fastgan-cpu`` (``DEFAULT_PRESETS``).
    """
    model = overrides.get("model")
    if model and model != "dcgan":
        if preset is None:
            preset = DEFAULT_PRESETS.get(model, f"{model}-cpu-small")
        elif preset not in PRESETS and f"{model}-{preset}" in PRESETS:
            preset = f"{model}-{preset}"
    cfg = C.from_preset(TrainConfig, PRESETS, preset, overrides)
    if "sg2_arch" in overrides:  # a named architecture sets its fields, except those given explicitly
        cfg = C.apply_overrides(cfg, {k: v for k, v in _arch_fields(cfg.sg2_arch).items() if k not in overrides})
    cfg.validate()
    return cfg


def from_dict(values: Mapping[str, Any]) -> TrainConfig:
    """A saved config (``training_options.json``, a checkpoint's ``config``) back as a TrainConfig.

    Configs saved before the architecture fields existed get them from their ``sg2_arch``."""
    arch = values.get("sg2_arch", TrainConfig.sg2_arch)
    missing = {k: v for k, v in _arch_fields(arch).items() if k not in values} if arch in STYLEGAN2_PRESETS else {}
    return C.apply_overrides(TrainConfig(), {**missing, **values})


def load(path: str | Path) -> TrainConfig:
    """A run's saved ``training_options.json``."""
    import json

    return from_dict(json.loads(Path(path).read_text()))




def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """CLI flags over the preset; when resuming without --preset, over the run's saved config."""
    overrides = C.overrides_from_args(args, TrainConfig)
    options = project_path(args.out) / OPTIONS
    if args.resume and args.preset is None and options.exists():
        return C.apply_overrides(load(options), overrides)
    return make_config(args.preset, **overrides)


def cli_add_arguments(parser: argparse.ArgumentParser) -> None:
    """``train``'s flags: the run folder, resume/overwrite, and one flag per TrainConfig field."""
    parser.add_argument("--preset", default=None, metavar="NAME",
                        help=f"starting point: {', '.join(PRESETS)} (with --model stylegan2 or fastgan the prefix may be "
                             "dropped; default: the saved config when resuming, else TrainConfig defaults)")
    parser.add_argument("--out", required=True, help="run folder, e.g. results/RUN")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing run in --out first")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    C.add_arguments(parser, TrainConfig)
