"""Classifier two-sample test: calibration on equal distributions, power on blurred images, the maths."""


import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from cxr_utils import c2st as C
from cxr_utils import phantom
from cxr_utils.errors import DataError
from cxr_utils.metrics import single_threaded
from helpers import gaussian_blur


@pytest.fixture(autouse=True)
def one_thread():
    with single_threaded():
        yield


def _phantom(n: int, seed: int) -> torch.Tensor:
    """Phantom images shrunk to 32 px: the tests train many small classifiers."""
    x = torch.from_numpy(phantom.generate(n, 64, seed).images).float().div(127.5).sub(1)[:, None]
    return F.interpolate(x, size=(32, 32), mode="area")


_blur = gaussian_blur


@pytest.fixture(scope="module")
def sets():
    return _phantom(200, seed=0), _phantom(200, seed=1)


def test_two_samples_of_one_distribution_give_auc_near_one_half(sets):
    a, b = sets
    r = C.c2st(a, b, min_seeds=4, max_seeds=8, steps=60)
    lo, hi = r["auc_ci95"]
    assert lo <= 0.5 <= hi and abs(r["auc"] - 0.5) < 0.1
    assert r["n_seeds"] == len(r["per_seed_auc"]) and 4 <= r["n_seeds"] <= 8
    assert r["auc_median"] == pytest.approx(float(np.median(r["per_seed_auc"])))
    assert r["n_per_set"] == 200 and r["n_test"] == 2 * 60


def test_auc_ranks_real_below_slightly_below_heavily_blurred(sets):
    a, b = sets
    auc = {name: C.c2st(a, y, min_seeds=3, max_seeds=3, steps=60)["auc"]
           for name, y in (("real", b), ("slight", _blur(b, 0.6)), ("heavy", _blur(b, 1.5)))}
    assert auc["heavy"] > 0.9, auc
    assert auc["real"] < auc["slight"] < auc["heavy"], auc


def test_seeds_stop_once_the_interval_is_narrow_enough(sets):
    a, b = sets
    r = C.c2st(a, _blur(b, 1.5), min_seeds=3, max_seeds=10, steps=60, target_halfwidth=0.05)
    assert r["converged"] and r["auc_halfwidth"] <= 0.05 and r["n_seeds"] == 3  # separable: every seed agrees


def test_t_interval_matches_scipy():
    v = [0.61, 0.55, 0.58, 0.49, 0.66]
    mean, lo, hi = C.t_interval(v)
    ref = scipy.stats.t.interval(0.95, len(v) - 1, loc=np.mean(v), scale=scipy.stats.sem(v))
    assert (lo, hi) == pytest.approx(ref, rel=1e-12) and mean == pytest.approx(0.578)


def test_threshold_is_the_best_midpoint_on_validation_scores():
    scores = np.array([-2.0, -1.0, 0.5, 1.0, 3.0])
    labels = np.array([0, 0, 1, 0, 1])
    assert C._best_threshold(scores, labels) == pytest.approx(-0.25)  # 4/5 correct, first of the ties


def test_too_few_images_is_a_data_error(sets):
    with pytest.raises(DataError, match="at least 10 images"):
        C.c2st_once(sets[0][:5], sets[1][:5], seed=0)


def test_bands_split_layout_from_detail(sets):
    """Known cases: fine noise changes only the detail band, a smooth left-right shading only the
    coarse band; each is found in its own band and not (or far less) in the other."""
    a, b = sets
    gen = torch.Generator().manual_seed(3)
    noisy = (b + 0.12 * torch.randn(b.shape, generator=gen)).clamp(-1, 1)
    ramp = torch.linspace(-1, 1, b.shape[-1]).view(1, 1, 1, -1)
    shaded = (b + 0.35 * ramp).clamp(-1, 1)
    opts = dict(min_seeds=3, max_seeds=3, steps=80)
    by_noise = C.c2st_bands(a, noisy, **opts)
    by_shade = C.c2st_bands(a, shaded, bands=("coarse", "detail"), **opts)
    assert by_noise["full"]["auc"] > 0.9 and by_noise["detail"]["auc"] > 0.9
    assert by_noise["coarse"]["auc"] < 0.7
    assert by_shade["coarse"]["auc"] > 0.9
    assert by_shade["detail"]["auc"] < 0.7


def test_band_definitions_against_direct_computation():
    x = torch.rand(2, 1, 8, 8)
    coarse = C.band(x, "coarse", coarse_factor=4)
    for i in range(2):
        for j in range(2):
            block = x[:, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4]
            assert torch.allclose(coarse[:, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4],
                                  block.mean(dim=(2, 3), keepdim=True).expand_as(block), atol=1e-6)
    assert torch.equal(C.band(x, "full"), x)
    # detail = x - blur(x); a constant image has none, and its blur is the helper's own (reflect padding)
    assert torch.count_nonzero(C.band(torch.full((1, 1, 16, 16), 0.4), "detail").abs() > 1e-6) == 0
    y = torch.rand(1, 1, 32, 32)
    assert torch.allclose(C.band(y, "detail", detail_sigma=1.5), y - gaussian_blur(y, 1.5), atol=1e-5)
    with pytest.raises(DataError, match="unknown band"):
        C.band(x, "middle")
    with pytest.raises(DataError, match="not divisible"):
        C.band(torch.rand(1, 1, 10, 10), "coarse")


def test_evidence_map_averages_to_the_classifier_logit(sets):
    a, b = sets
    net, _ = C._fit(a, _blur(b, 1.5), seed=0, steps=20, batch_size=32, lr=2e-3, max_per_set=40)
    x = torch.cat([a[:5], b[:5]])
    maps = C.evidence_map(net, x)
    assert maps.shape == (10, 4, 4)  # 32 px / 8
    assert C.evidence_map(net, F.pad(x, (0, 8, 0, 4))).shape == (10, 4, 5)  # 36 x 40 px: floor(side / 8)
    with torch.no_grad():
        assert torch.allclose(maps.mean(dim=(1, 2)), net(x), atol=1e-5)


def test_evidence_is_the_first_seeds_classifier(sets):
    a, b = sets
    ev = C.c2st_evidence(a, _blur(b, 1.5), seed=3, steps=40, max_per_set=60)
    once = C.c2st_once(a, _blur(b, 1.5), seed=3, steps=40, max_per_set=60)
    assert ev["auc"] == pytest.approx(once["auc"], abs=1e-9)
    assert len(ev["test_a"]) == len(ev["test_b"]) == 18 and ev["maps_b"].shape == (18, 4, 4)
    assert ev["difference"].shape == (4, 4)
    np.testing.assert_allclose(ev["difference"], (ev["maps_b"].mean(0) - ev["maps_a"].mean(0)).double().numpy())


def test_evidence_sits_where_the_generated_images_differ(sets):
    """Known case: the second set is the first with a bright 8x8 square in its top-left corner, so the
    evidence must concentrate there and not in the opposite corner."""
    a, _ = sets
    b = a.clone()
    b[:, :, 2:10, 2:10] = 0.9
    ev = C.c2st_evidence(a, b, seed=0, steps=150, max_per_set=200)
    d = ev["difference"]
    assert ev["auc"] > 0.99
    assert np.unravel_index(np.argmax(d), d.shape) in {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert d[:2, :2].mean() > 3 * abs(d[2:, 2:].mean()), d
