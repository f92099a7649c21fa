"""The downstream classifier: a 1-channel ResNet (or a tiny CNN), its training and its test metrics.

The study asks whether synthetic images help a classifier, so everything here is about a fair,
repeatable comparison: seeded training with early stopping on validation, a decision threshold
fixed on validation (never on test), bootstrap confidence intervals, and a paired bootstrap for the
difference between two classifiers scored on the same test images (all in ``stats``). ImageNet weights are used only
when they are already on disk and asked for; every result says which weights were used.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import device as devices
from .stats import macro_auc, score_metrics, youden_threshold
from .errors import ConfigError, DataError

Backbone = Literal["resnet50", "resnet18", "smallcnn"]

# torchvision's ImageNet checkpoints, newest first (the file names torch.hub caches them under)
IMAGENET_FILES: dict[str, tuple[str, ...]] = {
    "resnet50": ("resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth"),
    "resnet18": ("resnet18-f37072fd.pth",),
}
# ImageNet RGB statistics averaged to one grey channel, for inputs of a pretrained network
_IMAGENET_GREY_MEAN = 0.449
_IMAGENET_GREY_STD = 0.226


@dataclass
class ClassifierConfig:
    """Everything that defines one classifier training run."""

    backbone: Backbone = field(default="resnet50", metadata={"help": "resnet50, resnet18 or smallcnn"})
    pretrained: bool = field(default=False, metadata={"help": "start from local ImageNet weights"})
    weights_path: str | None = field(default=None, metadata={"help": "ImageNet checkpoint file "
                                                             "(default: the torch hub cache)"})
    epochs: int = field(default=30, metadata={"help": "maximum epochs"})
    batch_size: int = field(default=32, metadata={"help": "training batch size"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate (cosine decay)"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    patience: int = field(default=5, metadata={"help": "epochs without validation improvement "
                                               "before stopping (0: never stop early)"})
    monitor: Literal["auc", "loss"] = field(default="auc", metadata={"help": "validation criterion"})
    augment: Literal["none", "classic"] = field(default="classic", metadata={
        "help": "classic: flips, small affine, intensity jitter"})
    image_size: int = field(default=128, metadata={"help": "input side; other sizes are resized"})
    threshold: Literal["youden", "fixed"] = field(default="youden", metadata={
        "help": "binary decision threshold: Youden's J on validation, or fixed 0.5"})
    seed: int = field(default=0, metadata={"help": "seeds weights, shuffling and augmentation"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N"})
    precision: Literal["auto", "fp32", "bf16"] = field(default="auto", metadata={
        "help": "bf16 autocast; auto: bf16 where the GPU or CPU runs it natively"})

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "image_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.patience < 0:
            raise ConfigError(f"patience must be >= 0, got {self.patience}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError(f"need lr > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")


CLASSIFIER_PRESETS: dict[str, dict[str, Any]] = {
    # seconds on a laptop CPU: for tests and smoke runs
    "smoke": {"backbone": "smallcnn", "image_size": 32, "epochs": 3, "patience": 0},
    # a CPU-sized study
    "cpu": {"backbone": "resnet18", "image_size": 64, "epochs": 20},
    # the full-size setting on a GPU
    "gpu": {"backbone": "resnet50", "pretrained": True, "image_size": 224, "epochs": 30},
}


# --------------------------------------------------------------------------------------- models


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU-pool blocks and a linear head: fast enough for unit tests on a CPU.

    The head sees both the average and the maximum of each feature map: a small lesion lights up a
    few positions only, which a global average alone would dilute.
    """

    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for i in range(4):
            c_out = width * 2 ** i
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(2 * c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.fc(torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1))


class CXRClassifier(nn.Module):
    """A backbone plus what is needed to use it correctly later.

    It takes images as the project stores them (N x C x H x W in [-1, 1]), resizes them to
    ``image_size``, averages colour channels to grey, and applies the ImageNet input statistics
    when the backbone was pretrained on ImageNet. ``weights`` says which start the backbone had;
    ``threshold`` is the binary decision threshold set by training (on validation data).
    """

    def __init__(self, net: nn.Module, backbone: str, num_classes: int, image_size: int, weights: str):
        super().__init__()
        self.net = net
        self.backbone = backbone
        self.num_classes = num_classes
        self.image_size = image_size
        self.weights = weights
        self.threshold = 0.5
        self.threshold_rule = "fixed 0.5"

    def get_extra_state(self) -> dict[str, Any]:
        """Stored in ``state_dict()`` so a saved model keeps its threshold and weights label."""
        return {"backbone": self.backbone, "num_classes": self.num_classes, "image_size": self.image_size,
                "weights": self.weights, "threshold": self.threshold, "threshold_rule": self.threshold_rule}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.weights = state["weights"]
        self.threshold = state["threshold"]
        self.threshold_rule = state["threshold_rule"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 1:
            x = x.mean(dim=1, keepdim=True)
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        if self.weights == "imagenet":
            x = ((x + 1) / 2 - _IMAGENET_GREY_MEAN) / _IMAGENET_GREY_STD
        return self.net(x)


def find_imagenet_weights(backbone: str, weights_path: str | Path | None = None) -> tuple[Path | None, Path]:
    """(existing checkpoint or None, the path that was looked at) -- never downloads."""
    if weights_path:
        path = Path(weights_path).expanduser()
        return (path if path.is_file() else None), path
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    for name in IMAGENET_FILES.get(backbone, ()):
        if (folder / name).is_file():
            return folder / name, folder / name
    return None, folder / IMAGENET_FILES[backbone][0]


def _load_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which one
        raise ConfigError(f"cannot read ImageNet checkpoint {path}: {type(exc).__name__}") from None


def _resnet(backbone: str, num_classes: int, state: dict | None) -> nn.Module:
    from torchvision import models

    net = getattr(models, backbone)(weights=None)
    if state is not None:
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ConfigError(f"the ImageNet checkpoint does not fit {backbone}: {first}") from None
    old = net.conv1
    conv1 = nn.Conv2d(1, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
    if state is not None:  # a grey image is R = G = B, so summed RGB filters see it the same way;
        with torch.no_grad():  # the mean keeps activations at the scale of one channel
            conv1.weight.copy_(old.weight.mean(dim=1, keepdim=True))
    net.conv1 = conv1
    net.fc = nn.Linear(net.fc.in_features, num_classes)
    return net


def build_classifier(backbone: str = "resnet50", num_classes: int = 2, image_size: int = 128,
                     pretrained: bool = False, weights_path: str | Path | None = None,
                     seed: int | None = None) -> CXRClassifier:
    """A 1-channel classifier; ImageNet weights only if requested and already on disk.

    A missing checkpoint is not an error: one warning, a from-scratch network, and a ``weights``
    label that says what happened ("scratch (imagenet weights not found at ...)").
    """
    if backbone not in ("resnet50", "resnet18", "smallcnn"):
        raise ConfigError(f"unknown backbone {backbone!r}; choose resnet50, resnet18 or smallcnn")
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    state = None
    weights = "scratch"
    if pretrained:
        if backbone == "smallcnn":
            weights = "scratch (no imagenet weights exist for smallcnn)"
        else:
            found, looked = find_imagenet_weights(backbone, weights_path)
            if found is None:
                weights = f"scratch (imagenet weights not found at {looked})"
            else:
                state = _load_state(found)
                weights = "imagenet"
        if weights != "imagenet":
            warnings.warn(f"pretrained {backbone} requested, training from {weights}", stacklevel=2)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        net = SmallCNN(num_classes) if backbone == "smallcnn" else _resnet(backbone, num_classes, state)
    return CXRClassifier(net, backbone, num_classes, image_size, weights)


def save_classifier(model: CXRClassifier, path: str | Path) -> None:
    """Write the weights with everything needed to rebuild and use the model."""
    torch.save({"meta": model.get_extra_state(), "state_dict": model.state_dict()}, Path(path))


def load_classifier(path: str | Path, map_location: str | torch.device = "cpu") -> CXRClassifier:
    """Rebuild a model written by :func:`save_classifier` (no ImageNet file is needed for that)."""
    try:
        saved = torch.load(Path(path), map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise DataError(f"classifier file not found: {path}") from None
    meta = saved["meta"]
    model = build_classifier(meta["backbone"], meta["num_classes"], meta["image_size"])
    model.load_state_dict(saved["state_dict"])
    return model


# ---------------------------------------------------------------------------------- augmentation


def classic_augment(x: torch.Tensor, generator: torch.Generator, max_degrees: float = 10.0,
                    max_shift: float = 0.06, max_zoom: float = 0.1, max_brightness: float = 0.1,
                    max_contrast: float = 0.1) -> torch.Tensor:
    """Random horizontal flip, small rotation/shift/zoom and brightness/contrast jitter, per image.

    Works on a batch in [-1, 1] on any device; all randomness comes from ``generator`` (CPU), so a
    seeded run is repeatable. Pixels moved in from outside the image are black (-1).
    """
    n = x.shape[0]

    def uniform(scale: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) * 2 - 1) * scale

    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    angle = uniform(math.radians(max_degrees))
    zoom = 1 + uniform(max_zoom)
    shift = torch.stack([uniform(max_shift), uniform(max_shift)], dim=1) * 2
    brightness, contrast = uniform(max_brightness), 1 + uniform(max_contrast)

    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1).to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * contrast.view(-1, 1, 1, 1).to(x) + mean + brightness.view(-1, 1, 1, 1).to(x)
    return out.clamp(-1, 1)


# ------------------------------------------------------------------------------------- training


def _check_xy(x: torch.Tensor, y: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.as_tensor(np.asarray(y), dtype=torch.long).reshape(-1)
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise DataError(f"{what} images must be a 4-D tensor N x C x H x W")
    if len(x) != len(y) or len(x) == 0:
        raise DataError(f"{what}: {len(x)} images but {len(y)} labels")
    return x, y


@torch.no_grad()
def predict_scores(model: CXRClassifier, x: torch.Tensor, batch_size: int = 256,
                   device: str | torch.device | None = None) -> np.ndarray:
    """Class probabilities: (N,) P(class 1) for a binary model, (N, K) otherwise."""
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval().to(dev)
    probs = [torch.softmax(model(x[i:i + batch_size].to(dev)).float(), dim=1).cpu()
             for i in range(0, len(x), batch_size)]
    model.train(was_training)
    p = torch.cat(probs).numpy().astype(np.float64)
    return p[:, 1] if model.num_classes == 2 else p


def _validation(model: CXRClassifier, x: torch.Tensor, y: torch.Tensor,
                batch_size: int) -> tuple[float, float, np.ndarray]:
    probs = predict_scores(model, x, batch_size=max(batch_size, 128))
    p = probs if probs.ndim == 2 else np.stack([1 - probs, probs], axis=1)
    yy = y.numpy()
    loss = float(-np.mean(np.log(np.clip(p[np.arange(len(yy)), yy], 1e-12, None))))
    return loss, macro_auc(yy, probs), probs


def train_classifier(cfg: ClassifierConfig, train_x: torch.Tensor, train_y: Any, val_x: torch.Tensor,
                     val_y: Any, progress: bool = True,
                     num_classes: int | None = None) -> tuple[CXRClassifier, dict[str, Any]]:
    """Train with AdamW + cosine decay, early-stop on validation, return the best epoch's model.

    Shuffling, augmentation and initial weights all derive from ``cfg.seed``, so a CPU run is
    repeatable. For a binary task the model's decision threshold is then set on the validation
    scores (Youden's J, or 0.5 per ``cfg.threshold``). ``history["epochs"]`` holds one row per
    epoch (``pandas.DataFrame(history["epochs"])``); the rest is a summary, including ``weights``.
    """
    cfg.validate()
    train_x, train_y = _check_xy(train_x, train_y, "training")
    val_x, val_y = _check_xy(val_x, val_y, "validation")
    k = num_classes or int(max(train_y.max(), val_y.max())) + 1
    device = devices.pick_device(cfg.device)
    amp = devices.resolve_precision(cfg.precision, device)
    channels_last = devices.resolve_channels_last("auto", device, amp)
    devices.enable_fast_math(device)
    model = build_classifier(cfg.backbone, max(k, 2), cfg.image_size, cfg.pretrained, cfg.weights_path,
                             seed=cfg.seed).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    gen = torch.Generator().manual_seed(cfg.seed)

    rows: list[dict[str, float]] = []
    best_score, best_epoch, best_state = (-math.inf,), 0, copy.deepcopy(model.state_dict())
    bar = _progress_bar(cfg.epochs, cfg.backbone, progress)
    start = time.perf_counter()
    n_seen = 0
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        train_loss = _train_epoch(model, opt, train_x, train_y, cfg, gen, device, amp, channels_last)
        seconds = time.perf_counter() - t0
        n_seen += len(train_x)
        val_loss, val_auc, _ = _validation(model, val_x, val_y, cfg.batch_size)
        rows.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_auc": val_auc,
                     "lr": opt.param_groups[0]["lr"], "seconds": seconds})
        sched.step()
        # AUC saturates on easy data, so validation loss breaks its ties
        score = (-val_loss,) if cfg.monitor == "loss" or math.isnan(val_auc) else (val_auc, -val_loss)
        if score > best_score:
            best_score, best_epoch, best_state = score, epoch, copy.deepcopy(model.state_dict())
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.3f}", val_auc=f"{val_auc:.3f}", best=best_epoch)
        if cfg.patience and epoch - best_epoch >= cfg.patience:
            break
    if bar is not None:
        bar.close()
    total = time.perf_counter() - start

    model.load_state_dict(best_state)
    if model.num_classes == 2:
        _, _, val_scores = _validation(model, val_x, val_y, cfg.batch_size)
        if cfg.threshold == "youden":
            model.threshold = youden_threshold(val_y.numpy(), val_scores)
            model.threshold_rule = "youden (validation)"
    history = {
        "epochs": rows, "best_epoch": best_epoch, "stopped_early": len(rows) < cfg.epochs,
        "best_val_auc": rows[best_epoch - 1]["val_auc"], "best_val_loss": rows[best_epoch - 1]["val_loss"],
        "monitor": cfg.monitor, "weights": model.weights, "backbone": cfg.backbone,
        "threshold": model.threshold, "threshold_rule": model.threshold_rule,
        "train_seconds": total, "train_images_per_s": n_seen / max(sum(r["seconds"] for r in rows), 1e-9),
        "device": devices.describe(device, amp, channels_last),
    }
    return model, history


def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="epoch", leave=False)


def _train_epoch(model: CXRClassifier, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                 cfg: ClassifierConfig, gen: torch.Generator, device: torch.device,
                 amp: torch.dtype | None, channels_last: bool) -> float:
    model.train()
    order = torch.randperm(len(x), generator=gen)
    total, count = 0.0, 0
    for i in range(0, len(x), cfg.batch_size):
        idx = order[i:i + cfg.batch_size]
        if len(idx) < 2 and len(x) >= 2:  # BatchNorm cannot train on a single image
            continue
        xb, yb = x[idx].to(device), y[idx].to(device)
        if cfg.augment == "classic":
            xb = classic_augment(xb, gen)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with devices.autocast(device, amp):
            logits = model(xb)
        loss = F.cross_entropy(logits.float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
        count += len(idx)
    return total / max(count, 1)


def evaluate_classifier(model: CXRClassifier, x: torch.Tensor, y: Any, threshold: float | None = None,
                        n_boot: int = 1000, seed: int = 0, batch_size: int = 256) -> dict[str, Any]:
    """Test metrics with 95% bootstrap intervals, plus the weights label and threshold rule used.

    The binary threshold is the model's own (set on validation by ``train_classifier``) unless
    ``threshold`` is given.
    """
    x, y_t = _check_xy(x, y, "test")
    scores = predict_scores(model, x, batch_size=batch_size)
    t = model.threshold if threshold is None else float(threshold)
    rule = model.threshold_rule if threshold is None else f"fixed {t:g}"
    out: dict[str, Any] = {"backbone": model.backbone, "weights": model.weights}
    if model.num_classes == 2:
        out["threshold_rule"] = rule
    out |= score_metrics(y_t.numpy(), scores, threshold=t, n_boot=n_boot, seed=seed)
    return out
