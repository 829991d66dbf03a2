"""wsbus.evaluate statistics: bootstrap CIs, the paper's paired t-test and McNemar's exact test."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from wsbus.evaluate import (
    PairedTestResult,
    bootstrap_ci,
    bootstrap_means,
    mcnemar_exact,
    paired_test,
    percentile_interval,
)


def outcomes(n, p, seed):
    return np.random.default_rng(seed).random(n) < p


def test_bootstrap_means_resample_images_with_replacement():
    x = outcomes(300, 0.8, seed=1)
    # The same scheme written out: n_boot rows of n indices drawn uniformly with replacement.
    rng = np.random.default_rng(7)
    idx = rng.integers(0, x.size, size=(500, x.size))
    np.testing.assert_array_equal(bootstrap_means(x, n_boot=500, seed=7), x[idx].mean(axis=1))
    # Means of resamples of 0/1 outcomes are multiples of 1/n, centred on the sample mean.
    m = bootstrap_means(x, n_boot=2000, seed=0)
    np.testing.assert_allclose(m * x.size, np.round(m * x.size), atol=1e-9)
    assert abs(m.mean() - x.mean()) < 0.005


def test_bootstrap_means_large_inputs_stay_bounded_and_paired():
    x = outcomes(5000, 0.7, seed=2)
    y = outcomes(5000, 0.6, seed=3)
    both = bootstrap_means(np.stack([x, y]), n_boot=600, seed=4)  # resampled in several blocks
    assert both.shape == (2, 600)
    np.testing.assert_array_equal(both[0], bootstrap_means(x, n_boot=600, seed=4))  # same resamples
    np.testing.assert_array_equal(both[1], bootstrap_means(y, n_boot=600, seed=4))
    assert bootstrap_means(torch.from_numpy(x), n_boot=600, seed=4) == pytest.approx(both[0])


def test_percentile_interval_hand_worked():
    assert percentile_interval(np.arange(101.0), level=0.9) == pytest.approx((5.0, 95.0))
    assert percentile_interval([3.0, 3.0, 3.0]) == (3.0, 3.0)


def test_bootstrap_ci_seeded_contains_mean_and_matches_the_normal_width():
    x = outcomes(400, 0.845, seed=0)
    lo, hi = bootstrap_ci(x, n_boot=2000, seed=0)
    assert (lo, hi) == bootstrap_ci(x, n_boot=2000, seed=0)  # deterministic
    assert (lo, hi) != bootstrap_ci(x, n_boot=2000, seed=1)
    assert lo < x.mean() < hi
    # Independent check: the CLT width 2 * 1.96 * sqrt(p (1 - p) / n).
    p = x.mean()
    assert hi - lo == pytest.approx(2 * 1.959964 * math.sqrt(p * (1 - p) / x.size), rel=0.12)
    assert isinstance(lo, float) and isinstance(hi, float)


def test_bootstrap_ci_shrinks_with_more_images():
    widths = []
    for n in (50, 200, 800, 3200):
        lo, hi = bootstrap_ci(outcomes(n, 0.8, seed=n), n_boot=1000, seed=0)
        widths.append(hi - lo)
    assert all(a > b for a, b in zip(widths, widths[1:]))
    assert widths[0] / widths[-1] == pytest.approx(8.0, rel=0.3)  # width ~ 1 / sqrt(n)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.booleans(), min_size=1, max_size=80), st.integers(0, 2**31 - 1))
def test_bootstrap_ci_always_brackets_the_observed_mean(values, seed):
    lo, hi = bootstrap_ci(values, n_boot=300, seed=seed)
    assert 0.0 <= lo <= np.mean(values) <= hi <= 1.0


def test_bootstrap_bad_input():
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="n_boot must be a positive integer"):
        bootstrap_ci([1, 0], n_boot=0)
    with pytest.raises(ValueError, match="level must be in"):
        bootstrap_ci([1, 0], level=95)
    with pytest.raises(ValueError, match="1-D"):
        bootstrap_ci([[1, 0], [0, 1]])


def test_mcnemar_matches_a_hand_computed_binomial():
    # 8 images only A gets right, 2 only B, 20 both, 5 neither.
    a = np.array([1] * 8 + [0] * 2 + [1] * 20 + [0] * 5, bool)
    b = np.array([0] * 8 + [1] * 2 + [1] * 20 + [0] * 5, bool)
    n_a, n_b, p = mcnemar_exact(a, b)
    assert (n_a, n_b) == (8, 2)
    # Two-sided exact binomial: 2 * P(X <= 2 | n=10, 1/2) = 2 * (1 + 10 + 45) / 1024.
    assert p == pytest.approx(112 / 1024)
    # One-sided "A better": P(X >= 8) = (45 + 10 + 1) / 1024.
    assert mcnemar_exact(a, b, alternative="greater")[2] == pytest.approx(56 / 1024)
    r = paired_test(a, b, n_boot=200)
    assert (r.n_a_only, r.n_b_only, r.mcnemar_pvalue) == (8, 2, pytest.approx(112 / 1024))


def test_paired_t_test_is_scipys_on_the_shared_resamples():
    a, b = outcomes(200, 0.85, seed=5), outcomes(200, 0.8, seed=6)
    r = paired_test(a, b, n_boot=500, seed=3)
    assert isinstance(r, PairedTestResult)
    boot = bootstrap_means(np.stack([a, b]), n_boot=500, seed=3)
    ref = stats.ttest_rel(boot[0], boot[1])
    assert r.t_statistic == pytest.approx(ref.statistic) and r.t_pvalue == pytest.approx(ref.pvalue)
    assert r.difference == pytest.approx(a.mean() - b.mean())
    assert r.difference_ci == percentile_interval(boot[0] - boot[1])
    assert r.difference_ci[0] < r.difference < r.difference_ci[1]
    assert (r.mean_a, r.mean_b, r.n_images, r.n_boot) == (pytest.approx(a.mean()), pytest.approx(b.mean()), 200, 500)
    assert "McNemar p=" in repr(r)


def test_identical_methods_show_no_difference():
    a = outcomes(150, 0.7, seed=9)
    r = paired_test(a, a.copy(), n_boot=300)
    assert r.mcnemar_pvalue == 1.0 and r.t_pvalue == 1.0
    assert r.difference == 0.0 and r.difference_ci == (0.0, 0.0) and r.t_statistic == 0.0
    assert (r.n_a_only, r.n_b_only) == (0, 0)


def test_bootstrap_t_test_p_value_shrinks_with_n_boot_but_mcnemar_does_not():
    # A small, non-significant difference (10 A-only vs 5 B-only images; McNemar p = 0.30): the paper's test
    # declares it "significant" just by drawing more bootstrap replicates.
    a = np.zeros(400, bool)
    b = np.zeros(400, bool)
    a[:300] = True
    b[:290] = True
    b[300:305] = True
    results = [paired_test(a, b, n_boot=n, seed=0) for n in (10, 50, 200, 1000)]
    expected = stats.binomtest(10, 15, 0.5).pvalue
    assert all(r.mcnemar_pvalue == pytest.approx(expected) for r in results) and expected > 0.2
    t_p = [r.t_pvalue for r in results]
    assert all(x > y for x, y in zip(t_p, t_p[1:]))
    assert t_p[1] < 1e-4  # already at n_boot = 50
    assert results[-1].difference_ci[0] < 0 < results[-1].difference_ci[1]  # the CI of the gain includes 0


def test_paired_test_bad_input():
    with pytest.raises(ValueError, match="same test images: per_image_a has 3 entries, per_image_b has 2"):
        paired_test([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="binary per-image outcomes.*entry 1 is 0.5"):
        paired_test([1, 0.5], [1, 0])
    with pytest.raises(ValueError, match="alternative must be"):
        paired_test([1, 0], [1, 0], alternative="bigger")
    with pytest.raises(TypeError, match="numeric or boolean"):
        paired_test(["a", "b"], [1, 0])
