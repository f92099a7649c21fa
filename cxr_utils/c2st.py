"""Classifier two-sample test (C2ST): can a small CNN tell generated radiographs from real ones?

Lopez-Paz & Oquab, "Revisiting Classifier Two-Sample Tests", ICLR 2017. Per seed, equal numbers of
images are drawn from both sets and split 50/20/30 into training, validation and test parts; a small
CNN learns real (0) vs other (1) on the training part, and is scored on test images it never saw.

What is reported, and why:

- the headline is the threshold-free ROC AUC on the test part (``sklearn.metrics.roc_auc_score``):
  0.5 when the sets are indistinguishable, 1 when every generated image is recognised. With a fixed
  0.5 threshold, accuracy of the same classifier on the same images swung between ~0.6 and ~0.97
  across seeds while its AUC stayed ~0.99: the threshold, not the images, moved;
- accuracy is reported too, with the threshold chosen on the validation part (the midpoint that
  maximises validation accuracy), never on the test images;
- seeds are added (``min_seeds`` to ``max_seeds``) until the 95% Student-t interval of the mean AUC
  is narrower than ``+-target_halfwidth``; the interval, the number of seeds and the median are
  reported beside the mean;
- the same test between two halves of the real images is the floor a perfect generator reaches at
  this sample size (``evaluate`` reports it as the real baseline).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from sklearn.metrics import roc_auc_score
from torch import nn

from .errors import DataError

SPLIT = (0.5, 0.2, 0.3)  # training, validation (threshold), test (scores)


class C2STNet(nn.Module):
    """Three strided 4x4 convolutions (16, 32, 64 channels, LeakyReLU), global average pool, one logit.

    Small on purpose: ~45k parameters, so a few epochs on a few hundred images separate sets that
    differ in sharpness, noise, contrast or layout, without memorising the training part.
    """

    STRIDE = 8  # input pixels per cell of the last feature map (three stride-2 convolutions)

    def __init__(self, channels: int = 1, width: int = 16):
        super().__init__()
        w = width
        lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        self.register_buffer("laplacian", lap.expand(channels, 1, 3, 3).clone())
        self.body = nn.Sequential(
            nn.Conv2d(2 * channels, w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * w, 4 * w, 3, 1, 1), nn.LeakyReLU(0.2),
        )
        self.head = nn.Linear(4 * w, 1)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """``N x C x H x W`` in [-1, 1] -> the last feature map, ``N x 4*width x H//8 x W//8``."""
        detail = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.laplacian, groups=x.shape[1])
        return self.body(torch.cat([x, 4 * detail], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``N x C x H x W`` in [-1, 1] -> ``N`` logits (positive: the second set)."""
        return self.head(self.feature_map(x).mean(dim=(2, 3))).squeeze(1)


def _train_classifier(x: torch.Tensor, y: torch.Tensor, seed: int, steps: int, batch_size: int,
                      lr: float) -> C2STNet:
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = C2STNet(x.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.5, 0.999))
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch_size,), generator=gen)
        loss = F.binary_cross_entropy_with_logits(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def _scores(net: nn.Module, x: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    return torch.cat([net(x[s:s + batch_size]) for s in range(0, len(x), batch_size)]).double().numpy()


def _best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The midpoint between consecutive validation scores that maximises validation accuracy."""
    s = np.unique(scores)
    cands = np.concatenate([[s[0] - 1], (s[1:] + s[:-1]) / 2, [s[-1] + 1]])
    acc = [((scores > c) == labels).mean() for c in cands]
    return float(cands[int(np.argmax(acc))])


def _fit(a: torch.Tensor, b: torch.Tensor, seed: int, steps: int, batch_size: int, lr: float,
         max_per_set: int | None) -> tuple[C2STNet, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Seed ``seed``'s draw and 50/20/30 split of ``a`` (label 0) and ``b`` (label 1), and the classifier
    trained on its training part: ``(net, {"train"|"val"|"test": (images, labels)})``."""
    n = min(len(a), len(b), max_per_set or len(a))
    if n < 10:
        raise DataError(f"C2ST needs at least 10 images per set, got {min(len(a), len(b))}")
    if a.shape[1:] != b.shape[1:]:
        raise DataError(f"C2ST sets differ in shape: {tuple(a.shape[1:])} vs {tuple(b.shape[1:])}")
    gen = torch.Generator().manual_seed(10_007 * seed + 1)
    ia, ib = torch.randperm(len(a), generator=gen)[:n], torch.randperm(len(b), generator=gen)[:n]
    n_tr, n_va = int(round(SPLIT[0] * n)), int(round(SPLIT[1] * n))
    parts = {}
    for name, sl in (("train", slice(0, n_tr)), ("val", slice(n_tr, n_tr + n_va)), ("test", slice(n_tr + n_va, n))):
        xa, xb = a[ia[sl]].float(), b[ib[sl]].float()
        parts[name] = (torch.cat([xa, xb]), torch.cat([torch.zeros(len(xa)), torch.ones(len(xb))]))
    net = _train_classifier(*parts["train"], seed=seed, steps=steps, batch_size=batch_size, lr=lr)
    return net, parts


def c2st_once(a: torch.Tensor, b: torch.Tensor, seed: int, steps: int = 200, batch_size: int = 32,
              lr: float = 2e-3, max_per_set: int | None = None) -> dict:
    """One seed of the test between ``a`` (label 0) and ``b`` (label 1), both ``N x C x H x W`` in [-1, 1].

    Draws ``n = min(len(a), len(b), max_per_set)`` images of each, splits them 50/20/30, trains
    :class:`C2STNet` for ``steps`` and returns ``{"auc", "accuracy", "threshold", "n_test"}`` on the
    test part. Raises DataError when fewer than 10 images per set are available.
    """
    net, parts = _fit(a, b, seed, steps, batch_size, lr, max_per_set)
    val_s, test_s = _scores(net, parts["val"][0]), _scores(net, parts["test"][0])
    val_y, test_y = parts["val"][1].numpy(), parts["test"][1].numpy()
    threshold = _best_threshold(val_s, val_y)
    return {"auc": float(roc_auc_score(test_y, test_s)), "accuracy": float(((test_s > threshold) == test_y).mean()),
            "threshold": threshold, "n_test": int(len(test_y))}


@torch.no_grad()
def evidence_map(net: C2STNet, x: torch.Tensor) -> torch.Tensor:
    """Where in each image the classifier finds its evidence: ``N x C x H x W`` -> ``N x H//8 x W//8`` logit
    contributions (a class activation map, Zhou et al., "Learning Deep Features for Discriminative
    Localization", CVPR 2016).

    :class:`C2STNet` ends in a global average pool and one linear layer, so the head applied at each
    position of the last feature map, bias included, is a map whose mean over positions is exactly the
    logit ``net(x)``. Positive cells push toward the second set ("generated"). Cells are 8 px apart
    (``C2STNet.STRIDE``) and each sees a 40 px receptive field (three stride-2 4x4 convolutions, one
    3x3, the 3x3 Laplacian), so the map localises to an 8 px grid, not to a pixel.
    """
    return torch.einsum("nchw,c->nhw", net.feature_map(x), net.head.weight[0]) + net.head.bias[0]


def c2st_evidence(a: torch.Tensor, b: torch.Tensor, seed: int = 0, steps: int = 200, batch_size: int = 32,
                  lr: float = 2e-3, max_per_set: int | None = 1000) -> dict:
    """Seed ``seed``'s classifier of :func:`c2st` called with the same ``steps`` and ``max_per_set``
    (same draw, split and training; the defaults are :func:`c2st`'s) and its evidence maps
    (:func:`evidence_map`) on the test images it never saw: *where* ``b`` (generated) gives itself away.

    Returns ``{"auc", "difference", "test_a", "test_b", "maps_a", "maps_b", "scores_b"}``: the seed's
    test AUC (equal to ``c2st_once(a, b, seed, steps=steps, max_per_set=max_per_set)["auc"]``), the
    mean map of ``b``'s test images minus the mean map of ``a``'s (``H//8 x W//8`` numpy, in logits:
    where the average generated image looks generated), the test images (``n x C x H x W``), their maps
    (``n x H//8 x W//8``) and ``b``'s logits. Raises DataError as :func:`c2st_once` does.
    """
    net, parts = _fit(a, b, seed, steps, batch_size, lr, max_per_set)
    x, y = parts["test"]
    test_a, test_b = x[y == 0], x[y == 1]
    maps_a, maps_b = evidence_map(net, test_a), evidence_map(net, test_b)
    scores = maps_b.mean(dim=(1, 2))
    auc = roc_auc_score(y.numpy(), torch.cat([maps_a.mean(dim=(1, 2)), scores]).double().numpy())
    return {"auc": float(auc), "difference": (maps_b.mean(0) - maps_a.mean(0)).double().numpy(),
            "test_a": test_a, "test_b": test_b, "maps_a": maps_a, "maps_b": maps_b, "scores_b": scores}


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t ``level`` interval of the mean of ``values``: ``(mean, low, high)``."""
    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, -math.inf, math.inf
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return mean, mean - half, mean + half


def c2st(a: torch.Tensor, b: torch.Tensor, seed: int = 0, min_seeds: int = 5, max_seeds: int = 20,
         target_halfwidth: float = 0.03, steps: int = 200, max_per_set: int | None = 1000) -> dict:
    """C2ST between ``a`` (real) and ``b`` (generated or held-out real), repeated over seeds.

    Seeds ``seed, seed + 1, ...`` are run until at least ``min_seeds`` are done and the 95% t-interval
    of the mean test AUC is narrower than ``+-target_halfwidth``, or ``max_seeds`` are done
    (``converged`` says which). Returns AUC mean, median, interval, per-seed AUCs, and the same for
    accuracy at the validation-chosen threshold; ``n_per_set`` images of each set are used per seed
    (at most ``max_per_set``, which bounds the cost).
    """
    if min_seeds < 2 or max_seeds < min_seeds:
        raise DataError(f"C2ST needs 2 <= min_seeds <= max_seeds, got {min_seeds}, {max_seeds}")
    runs: list[dict] = []
    for s in range(seed, seed + max_seeds):
        runs.append(c2st_once(a, b, s, steps=steps, max_per_set=max_per_set))
        if len(runs) >= min_seeds:
            mean, lo, hi = t_interval([r["auc"] for r in runs])
            if (hi - lo) / 2 <= target_halfwidth:
                break
    aucs, accs = [r["auc"] for r in runs], [r["accuracy"] for r in runs]
    mean, lo, hi = t_interval(aucs)
    acc_mean, acc_lo, acc_hi = t_interval(accs)
    return {
        "auc": mean, "auc_median": float(np.median(aucs)), "auc_ci95": [lo, hi], "auc_halfwidth": (hi - lo) / 2,
        "accuracy": acc_mean, "accuracy_median": float(np.median(accs)), "accuracy_ci95": [acc_lo, acc_hi],
        "n_seeds": len(runs), "converged": (hi - lo) / 2 <= target_halfwidth, "target_halfwidth": target_halfwidth,
        "max_seeds": max_seeds, "per_seed_auc": aucs, "per_seed_accuracy": accs,
        "n_per_set": min(len(a), len(b), max_per_set or len(a)), "n_test": runs[0]["n_test"], "steps": steps,
        "first_seed": seed,
    }


#: The bands :func:`c2st_bands` tests, in its report's order.
BANDS = ("full", "coarse", "detail")


def band(x: torch.Tensor, name: str, coarse_factor: int = 4, detail_sigma: float = 1.5) -> torch.Tensor:
    """One band of ``N x C x H x W`` images, same shape: ``full`` (as is), ``coarse`` (``coarse_factor``
    x ``coarse_factor`` block means, repeated back to full size: layout, shading, contrast) or ``detail``
    (the image minus its Gaussian blur of ``detail_sigma`` px: edges, texture, noise, upsampling
    artefacts). Blur and block means are torchvision's and torch's own ops.

    Raises:
        DataError: unknown band, or a side not divisible by ``coarse_factor``.
    """
    if name == "full":
        return x
    if name == "coarse":
        if x.shape[-1] % coarse_factor or x.shape[-2] % coarse_factor:
            raise DataError(f"image side {tuple(x.shape[-2:])} is not divisible by coarse_factor {coarse_factor}")
        return F.interpolate(F.avg_pool2d(x, coarse_factor), scale_factor=coarse_factor, mode="nearest")
    if name == "detail":
        from torchvision.transforms.functional import gaussian_blur

        k = 2 * math.ceil(3 * detail_sigma) + 1
        return x - gaussian_blur(x, [k, k], [detail_sigma, detail_sigma])
    raise DataError(f"unknown band {name!r}; choose from {', '.join(BANDS)}")


def c2st_bands(a: torch.Tensor, b: torch.Tensor, bands: Sequence[str] = BANDS, **kwargs) -> dict[str, dict]:
    """:func:`c2st` on each band of both sets (see :func:`band`): *what* tells the sets apart.

    A generator whose ``coarse`` AUC is near its floor but whose ``detail`` AUC is 1 draws the right
    layout with the wrong texture (an upsampling artefact, missing noise); the reverse is a layout
    problem that sharper texture will not fix. ``kwargs`` go to :func:`c2st` (seed, seeds, steps,
    ``max_per_set``); every band uses the same seeds and image draws. Returns ``{band: c2st result}``.
    Costs ``len(bands)`` C2STs.
    """
    return {name: c2st(band(a, name), band(b, name), **kwargs) for name in bands}
