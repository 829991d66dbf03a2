"""Bootstrap confidence intervals and paired tests on per-image outcomes.

The paper (Shin et al., TMI 2019, Tables II, IV and V) reports every CorLoc with a 95 % confidence interval obtained
by *bootstrapping the test images* (resampling them with replacement and recomputing CorLoc), and compares methods
with a *paired t-test over the bootstrap CorLoc values*. This module reproduces both, and adds McNemar's exact test
on the per-image outcomes, which is the test to trust (see :func:`paired_test`).

Taught in ``book/08_evaluation.md``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence, Tuple, Union

import numpy as np
import torch
from scipy import stats

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[float], Sequence[bool]]
Alternative = Literal["two-sided", "greater", "less"]

# Resample indices are drawn in blocks of about this many entries, so memory stays bounded (n_boot x n can be
# large) while the draws stay vectorised. The block size depends only on n, so results depend only on
# (data, n_boot, seed).
_BLOCK_ELEMENTS = 1 << 20


def _as_outcomes(per_image: ArrayLike, what: str = "per_image") -> np.ndarray:
    """Per-image outcomes as float64, 1-D [n] or 2-D [m, n]; finite and non-empty."""
    if isinstance(per_image, torch.Tensor):
        per_image = per_image.detach().cpu().numpy()
    x = np.asarray(per_image)
    if x.dtype == object:
        raise TypeError(f"{what} must be a numeric or boolean array, got objects: {x!r:.80}")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise TypeError(f"{what} must be a numeric or boolean array, got dtype {x.dtype}")
    if x.ndim not in (1, 2):
        raise ValueError(f"{what} must be 1-D (one value per image) or 2-D (methods x images), got shape {x.shape}")
    if x.shape[-1] == 0:
        raise ValueError(f"{what} is empty: the bootstrap needs at least one image")
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} contains NaN or infinite values (first at index "
                         f"{np.argwhere(~np.isfinite(x))[0].tolist()})")
    return x


def _check_boot(n_boot: int, level: float = 0.95) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1), e.g. 0.95, got {level!r}")


def bootstrap_means(per_image: ArrayLike, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Means of ``n_boot`` bootstrap resamples of the test images.

    Each resample draws ``n`` images with replacement (a vectorised :class:`numpy.random.Generator` seeded with
    ``seed``) and takes the mean outcome, e.g. the CorLoc of that resampled test set.

    Parameters
    ----------
    per_image : array [n] or [m, n]
        Per-image outcomes (bool or numbers), e.g. :attr:`CorLocResult.per_image`. A 2-D array holds ``m``
        methods evaluated on the *same* ``n`` images; every method then sees the same resamples (paired bootstrap).
    n_boot : int
        Number of bootstrap resamples.
    seed : int
        Seed of the generator; the same ``(per_image, n_boot, seed)`` always gives the same result.

    Returns
    -------
    numpy.ndarray
        float64 [n_boot] (or [m, n_boot] for 2-D input).

    Taught in ``book/08_evaluation.md``.
    """
    _check_boot(n_boot)
    x = _as_outcomes(per_image)
    squeeze = x.ndim == 1
    x = np.atleast_2d(x)
    n = x.shape[1]
    rng = np.random.default_rng(seed)
    out = np.empty((x.shape[0], n_boot), dtype=np.float64)
    block = max(1, _BLOCK_ELEMENTS // n)
    for start in range(0, n_boot, block):
        stop = min(n_boot, start + block)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[:, start:stop] = x[:, idx].mean(axis=-1)
    return out[0] if squeeze else out


def percentile_interval(values: ArrayLike, level: float = 0.95) -> Tuple[float, float]:
    """Central percentile interval of ``values`` holding a fraction ``level`` of them (numpy linear percentiles).

    Taught in ``book/08_evaluation.md``.
    """
    _check_boot(1, level)
    v = _as_outcomes(values, "values")
    if v.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {v.shape}")
    alpha = (1.0 - float(level)) / 2.0
    low, high = np.percentile(v, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(low), float(high)


def bootstrap_ci(per_image: ArrayLike, n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0) -> Tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean per-image outcome (e.g. CorLoc).

    The paper's CI: resample the test images with replacement ``n_boot`` times (:func:`bootstrap_means`), and take
    the ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles of the resampled means.

    Parameters
    ----------
    per_image : array [n]
        One outcome per test image (bool for CorLoc).
    n_boot, seed : see :func:`bootstrap_means`.
    level : float
        Coverage, 0.95 for the paper's 95 % CI.

    Returns
    -------
    (low, high) : tuple of float
        Fractions (not percentages), ``low <= high``.

    Taught in ``book/08_evaluation.md``.
    """
    _check_boot(n_boot, level)
    x = _as_outcomes(per_image)
    if x.ndim != 1:
        raise ValueError(f"per_image must be 1-D (one value per image), got shape {x.shape}")
    return percentile_interval(bootstrap_means(x, n_boot=n_boot, seed=seed), level)


def mcnemar_exact(per_image_a: ArrayLike, per_image_b: ArrayLike,
                  alternative: Alternative = "two-sided") -> Tuple[int, int, float]:
    """McNemar's exact test on paired binary outcomes.

    Only the discordant images carry information: ``n_a_only`` images that method A gets right and B wrong, and
    ``n_b_only`` the other way round. Under the null hypothesis (both methods equally good) ``n_a_only`` follows
    Binomial(n_a_only + n_b_only, 1/2); the p-value is :func:`scipy.stats.binomtest`'s (``alternative="greater"``
    tests "A better than B"). With no discordant image the p-value is 1.

    Returns
    -------
    (n_a_only, n_b_only, p_value)

    Taught in ``book/08_evaluation.md``.
    """
    a, b = _paired_binary(per_image_a, per_image_b)
    n_a_only = int(np.sum(a & ~b))
    n_b_only = int(np.sum(~a & b))
    n_disc = n_a_only + n_b_only
    p = 1.0 if n_disc == 0 else float(stats.binomtest(n_a_only, n_disc, 0.5, alternative=alternative).pvalue)
    return n_a_only, n_b_only, p


def _paired_binary(per_image_a: ArrayLike, per_image_b: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
    a = _as_outcomes(per_image_a, "per_image_a")
    b = _as_outcomes(per_image_b, "per_image_b")
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError(f"per-image outcomes must be 1-D, got shapes {a.shape} and {b.shape}")
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes need the same test images: per_image_a has {a.size} entries, "
                         f"per_image_b has {b.size}")
    for name, v in (("per_image_a", a), ("per_image_b", b)):
        bad = ~np.isin(v, (0.0, 1.0))
        if bad.any():
            raise ValueError(f"{name} must hold binary per-image outcomes (bool or 0/1) for McNemar's test; "
                             f"entry {int(np.argmax(bad))} is {float(v[bad][0]):g}")
    return a.astype(bool), b.astype(bool)


@dataclass(frozen=True)
class PairedTestResult:
    """Outcome of :func:`paired_test` (method A vs method B on the same test images).

    Attributes
    ----------
    n_images, n_boot, level : sizes and CI coverage used.
    mean_a, mean_b : observed mean outcome (CorLoc) of each method.
    difference : ``mean_a - mean_b``.
    difference_ci : percentile bootstrap CI of the difference (same resamples for both methods).
    t_statistic, t_pvalue : the paper's paired t-test over the bootstrap replicates
        (:func:`scipy.stats.ttest_rel`); its p-value shrinks as ``n_boot`` grows, see :func:`paired_test`.
    n_a_only, n_b_only : discordant images (A right and B wrong; B right and A wrong).
    mcnemar_pvalue : McNemar's exact test on the per-image outcomes -- the p-value to report.
    """

    n_images: int
    n_boot: int
    level: float
    mean_a: float
    mean_b: float
    difference: float
    difference_ci: Tuple[float, float]
    t_statistic: float
    t_pvalue: float
    n_a_only: int
    n_b_only: int
    mcnemar_pvalue: float

    def __repr__(self) -> str:
        lo, hi = self.difference_ci
        return (f"PairedTestResult(n_images={self.n_images}, A={100 * self.mean_a:.2f}%, B={100 * self.mean_b:.2f}%, "
                f"A-B={100 * self.difference:+.2f} pp [{100 * self.level:g}% CI {100 * lo:+.2f}, {100 * hi:+.2f}], "
                f"McNemar p={self.mcnemar_pvalue:.4g} ({self.n_a_only} A-only vs {self.n_b_only} B-only), "
                f"bootstrap t-test p={self.t_pvalue:.4g} (n_boot={self.n_boot}))")


def paired_test(per_image_a: ArrayLike, per_image_b: ArrayLike, n_boot: int = 1000, seed: int = 0,
                level: float = 0.95, alternative: Alternative = "two-sided") -> PairedTestResult:
    """Compare two methods evaluated on the same test images: the paper's test and McNemar's.

    1. **The paper's paired t-test.** Draw ``n_boot`` bootstrap resamples of the test images -- the *same*
       resamples for both methods -- compute each method's CorLoc on every resample (:func:`bootstrap_means`),
       and run :func:`scipy.stats.ttest_rel` on the two columns of ``n_boot`` values. This is what Shin et al.
       report in Table V. Be aware that it is not a valid test of the methods: the bootstrap replicates are not
       independent observations, the test's "sample size" is ``n_boot``, which the analyst chooses, and the
       p-value shrinks towards 0 as ``n_boot`` grows for *any* fixed non-zero difference. It is reproduced here so
       that the paper's numbers can be compared, not to decide anything.
    2. **McNemar's exact test** (:func:`mcnemar_exact`) on the per-image outcomes: a binomial test on the images
       where exactly one of the methods is right. Its sample size is the number of test images; it is the p-value
       to trust and to report.

    The bootstrap CI of the difference ``mean_a - mean_b`` (percentile, same resamples) is returned too; it is
    the most informative summary (how large the gain is, and how uncertain).

    Parameters
    ----------
    per_image_a, per_image_b : array [n]
        Binary per-image outcomes (e.g. :attr:`CorLocResult.per_image`) of the two methods, same images in the
        same order.
    n_boot, seed : bootstrap size and seed (see :func:`bootstrap_means`).
    level : coverage of the CI of the difference.
    alternative : ``"two-sided"`` (default), ``"greater"`` (A better than B) or ``"less"``; passed to both tests.

    Returns
    -------
    PairedTestResult
        With identical inputs: difference 0, CI (0, 0), McNemar p = 1, t-test p = 1 (all bootstrap
        differences are exactly 0, where :func:`scipy.stats.ttest_rel` is undefined; no evidence of a difference).

    Taught in ``book/08_evaluation.md``.
    """
    _check_boot(n_boot, level)
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"alternative must be 'two-sided', 'greater' or 'less', got {alternative!r}")
    a, b = _paired_binary(per_image_a, per_image_b)
    n_a_only, n_b_only, p_mcnemar = mcnemar_exact(a, b, alternative=alternative)
    boot = bootstrap_means(np.stack([a, b]).astype(np.float64), n_boot=n_boot, seed=seed)
    diff = boot[0] - boot[1]
    if np.all(diff == 0.0):
        t_stat, p_t = 0.0, 1.0
    else:
        res = stats.ttest_rel(boot[0], boot[1], alternative=alternative)
        t_stat, p_t = float(res.statistic), float(res.pvalue)
    return PairedTestResult(
        n_images=int(a.size), n_boot=int(n_boot), level=float(level),
        mean_a=float(a.mean()), mean_b=float(b.mean()), difference=float(a.mean() - b.mean()),
        difference_ci=percentile_interval(diff, level), t_statistic=t_stat, t_pvalue=p_t,
        n_a_only=n_a_only, n_b_only=n_b_only, mcnemar_pvalue=p_mcnemar)
