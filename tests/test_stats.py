"""Tests for emrakul.lab.stats: t-interval, interquartile mean and the stratified bootstrap."""

import numpy as np
import pytest

from emrakul.lab import stats


def _iqm_reference(x):
    x = sorted(float(v) for v in np.ravel(x))
    cut = len(x) // 4  # floor(0.25 n) from each end, as scipy.stats.trim_mean(x, 0.25)
    kept = x[cut : len(x) - cut]
    return sum(kept) / len(kept)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 13, 40])
def test_iqm_matches_a_reference_on_random_inputs(n):
    rng = np.random.default_rng(n)
    x = rng.standard_cauchy(size=n)
    assert stats.iqm(x) == pytest.approx(_iqm_reference(x), rel=1e-12)


def test_iqm_ignores_outliers_and_rejects_bad_input():
    assert stats.iqm([1, 2, 3, 4, 1e9, -1e9, 2.5, 3.5]) == pytest.approx(np.mean([2, 2.5, 3, 3.5]))
    with pytest.raises(ValueError, match="at least one"):
        stats.iqm([])
    with pytest.raises(ValueError, match="non-finite"):
        stats.iqm([1.0, np.nan])


def test_stratified_bootstrap_resamples_within_tasks():
    # Task 0 always scores 0, task 1 always 10: any within-task resample keeps the mean at 5,
    # while resampling across tasks would not.
    x = np.stack([np.zeros(6), np.full(6, 10.0)], axis=1)
    point, low, high = stats.stratified_bootstrap_ci(x, lambda r: float(r.mean()), reps=200)
    assert point == low == high == 5.0


def test_stratified_bootstrap_interval_covers_and_shrinks_with_runs():
    rng = np.random.default_rng(0)
    small = rng.normal(1.0, 1.0, size=(5, 3))
    large = rng.normal(1.0, 1.0, size=(80, 3))
    p1, l1, h1 = stats.stratified_bootstrap_ci(small, reps=500)
    p2, l2, h2 = stats.stratified_bootstrap_ci(large, reps=500)
    assert l1 <= p1 <= h1 and l2 <= p2 <= h2
    assert (h2 - l2) < (h1 - l1)
    assert l2 < 1.0 < h2  # the true IQM of N(1, 1) is 1
    # deterministic for a seed
    assert stats.stratified_bootstrap_ci(small, reps=100, seed=3) == stats.stratified_bootstrap_ci(
        small, reps=100, seed=3
    )


@pytest.mark.parametrize(
    "scores, kw, match",
    [
        (np.zeros(4), {}, "runs, tasks"),
        (np.zeros((0, 2)), {}, "runs, tasks"),
        (np.array([[np.inf]]), {}, "finite"),
        (np.zeros((2, 2)), {"reps": 0}, "reps"),
        (np.zeros((2, 2)), {"confidence": 1.0}, "confidence"),
    ],
)
def test_stratified_bootstrap_bad_inputs(scores, kw, match):
    with pytest.raises(ValueError, match=match):
        stats.stratified_bootstrap_ci(scores, **kw)


def test_mean_ci_against_hand_computation():
    m, h = stats.mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(4.303 * 1.0 / np.sqrt(3))
