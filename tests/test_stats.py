"""stats.py: AUC against sklearn, bootstrap intervals against hand-computed and known cases, subsets."""

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from cxr_utils import stats
from cxr_utils.stats import (bootstrap_ci, macro_auc, paired_bootstrap_delta, percentile_interval,
                             pooled_bootstrap, roc_auc, score_metrics, seeded_subset, stratified_resample,
                             youden_threshold)

# ------------------------------------------------------------------------------------- metrics


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    score = np.round(rng.random(300) + 0.3 * y, 1)  # coarse scores: many ties
    assert roc_auc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    y3 = rng.integers(0, 3, 300)
    probs = rng.dirichlet(np.ones(3), 300) + np.eye(3)[y3] * 0.2
    probs /= probs.sum(axis=1, keepdims=True)
    assert macro_auc(y3, probs) == pytest.approx(roc_auc_score(y3, probs, multi_class="ovr"), abs=1e-12)


def test_bootstrap_ci_of_perfect_separation_is_one():
    y = np.array([0] * 30 + [1] * 20)
    score = np.where(y == 1, 0.9, 0.1) + np.linspace(0, 0.05, 50)
    assert bootstrap_ci(y, score, roc_auc, n_boot=200, seed=0) == (1.0, 1.0, 1.0)


def test_bootstrap_accuracy_ci_matches_wilson_interval():
    rng = np.random.default_rng(1)
    n = 2000
    y = rng.integers(0, 2, n)
    correct = rng.random(n) < 0.8  # independent of the class, so stratification changes nothing
    score = np.where(correct == (y == 1), 0.9, 0.1)
    acc, low, high = bootstrap_ci(y, score, lambda t, s: np.mean((s >= 0.5) == (t == 1)), n_boot=1000, seed=0)
    assert acc == correct.mean()
    z = norm.ppf(0.975)
    centre = (acc + z ** 2 / (2 * n)) / (1 + z ** 2 / n)
    half = z / (1 + z ** 2 / n) * np.sqrt(acc * (1 - acc) / n + z ** 2 / (4 * n ** 2))
    assert low == pytest.approx(centre - half, abs=0.004)
    assert high == pytest.approx(centre + half, abs=0.004)


def test_paired_delta_of_identical_scores_is_zero():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    score = rng.random(200) + 0.5 * y
    d = paired_bootstrap_delta(y, score, score.copy(), n_boot=200, seed=0)
    assert (d["delta"], d["ci_low"], d["ci_high"], d["p_value"]) == (0.0, 0.0, 0.0, 1.0)


def test_paired_delta_detects_a_better_classifier():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    noise = rng.normal(size=400)
    weak, strong = noise + 0.3 * y, noise + 1.5 * y
    d = paired_bootstrap_delta(y, weak, strong, n_boot=500, seed=0)
    assert d["delta"] == pytest.approx(roc_auc_score(y, strong) - roc_auc_score(y, weak))
    assert 0 < d["ci_low"] < d["delta"] < d["ci_high"] and d["p_value"] < 0.01


def test_score_metrics_at_a_threshold():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.6, 0.2, 0.7, 0.3, 0.3, 0.1, 0.1, 0.0])
    m = score_metrics(y, s, threshold=0.5, n_boot=50)
    assert (m["sensitivity"], m["specificity"], m["accuracy"]) == (0.75, 5 / 6, 0.8)
    assert m["auc"] == pytest.approx(roc_auc_score(y, s))
    assert all(type(v) in (float, int) for v in m.values())
    assert m["sensitivity_ci_low"] <= m["sensitivity"] <= m["sensitivity_ci_high"]
    assert youden_threshold(y, s) == 0.6  # sens 3/4, spec 1: J = 0.75, the best cut


def test_auc_with_one_class_is_nan_and_youden_falls_back_to_one_half():
    y = np.zeros(5, dtype=int)
    assert np.isnan(roc_auc(y, np.linspace(0, 1, 5)))
    assert youden_threshold(y, np.linspace(0, 1, 5)) == 0.5


def test_percentile_interval_by_hand():
    # numpy's linear interpolation on 0..10: the 2.5th percentile is 0.25, the 97.5th 9.75
    assert percentile_interval(np.arange(11.0), 0.05) == (0.25, 9.75)
    # NaNs are dropped first: 0, 1, 2, 3 -> rank positions 0.075 and 2.925
    low, high = percentile_interval(np.array([np.nan, 0.0, 1.0, 2.0, 3.0]), 0.05)
    assert (low, high) == (pytest.approx(0.075), pytest.approx(2.925))
    assert all(np.isnan(v) for v in percentile_interval(np.array([np.nan]), 0.05))


def test_bootstrap_ci_of_a_tiny_case_by_hand():
    """Two images per class: replay the generator's draws to get every resample, then the percentiles."""
    y = np.array([0, 1, 0, 1])
    score = np.array([0.1, 0.9, 0.6, 0.4])
    n_boot = 40
    rng = np.random.default_rng(7)
    values = []
    for _ in range(n_boot):  # per class in sorted order, two draws from that class's members
        neg = np.array([0, 2])[rng.integers(0, 2, 2)]
        pos = np.array([1, 3])[rng.integers(0, 2, 2)]
        s_pos, s_neg = score[pos], score[neg]
        # AUC by its definition: P(positive score > negative score), ties one half
        values.append(np.mean([(p > q) + 0.5 * (p == q) for p in s_pos for q in s_neg]))
    est, low, high = bootstrap_ci(y, score, roc_auc, n_boot=n_boot, seed=7)
    assert est == 0.75  # pairs (0.9 vs 0.1, 0.6), (0.4 vs 0.1, 0.6): 3 of 4 ordered
    assert (low, high) == (pytest.approx(np.percentile(values, 2.5)), pytest.approx(np.percentile(values, 97.5)))
    # the only possible resample AUCs are quarter steps, so the interval spans a subset of them
    assert 0.0 <= low <= high <= 1.0


def test_stratified_resample_keeps_class_counts():
    y = np.array([2, 0, 2, 1, 0, 2, 2])
    idx = stratified_resample(y, np.random.default_rng(0))
    assert np.array_equal(np.bincount(y[idx]), np.bincount(y))
    assert len(stratified_resample(y, np.random.default_rng(0), stratify=False)) == len(y)


def test_paired_delta_of_a_known_case():
    """b orders every pair right, a every pair wrong: AUC 1 - AUC 0 on every resample, delta 1, p 0."""
    y = np.array([0, 0, 0, 1, 1, 1])
    right = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    d = paired_bootstrap_delta(y, 1 - right, right, n_boot=100, seed=0)
    assert (d["metric_a"], d["metric_b"], d["delta"]) == (0.0, 1.0, 1.0)
    assert (d["ci_low"], d["ci_high"], d["p_value"], d["n"], d["n_boot"]) == (1.0, 1.0, 0.0, 6, 100)


def test_pooled_bootstrap_averages_seeds_and_matches_paired_for_one_seed():
    rng = np.random.default_rng(4)
    tests = []
    for _ in range(3):
        y = rng.integers(0, 2, 80)
        noise = rng.normal(size=80)
        tests.append((y, noise + 0.2 * y, noise + 1.0 * y))
    mean, [(low, high)] = pooled_bootstrap(tests, n_boot=200, seed=0)
    per_seed = [roc_auc_score(y, b) - roc_auc_score(y, a) for y, a, b in tests]
    assert mean == pytest.approx(np.mean(per_seed)) and low < mean < high
    # one seed: the same stratified resamples as the paired bootstrap, so the same interval
    y, a, b = tests[0]
    _, [(l1, h1)] = pooled_bootstrap([tests[0]], n_boot=200, seed=5)
    d = paired_bootstrap_delta(y, a, b, n_boot=200, seed=5)
    assert (l1, h1) == (pytest.approx(d["ci_low"]), pytest.approx(d["ci_high"]))
    # without a baseline it is the AUC of b itself
    auc, _ = pooled_bootstrap([(y, None, b)], n_boot=100, seed=0)
    assert auc == pytest.approx(roc_auc_score(y, b))


def test_seeded_subset_is_the_seeded_permutation_prefix():
    idx = seeded_subset(50, 10, seed=3)
    expected = torch.randperm(50, generator=torch.Generator().manual_seed(3))[:10]
    assert np.array_equal(idx, np.sort(expected.numpy())) and idx.dtype == np.int64
    assert np.array_equal(seeded_subset(50, 10, seed=3, sort=False), expected.numpy())
    assert np.array_equal(seeded_subset(5, 10, seed=0), np.arange(5))
    assert not np.array_equal(seeded_subset(50, 10, seed=4), idx)


def test_score_metrics_length_mismatch_is_a_data_error():
    from cxr_utils.errors import DataError

    with pytest.raises(DataError, match="3 scores for 2 labels"):
        score_metrics(np.array([0, 1]), np.array([0.1, 0.2, 0.3]))
    assert stats.macro_auc(np.array([0, 1]), np.array([0.2, 0.8])) == 1.0
