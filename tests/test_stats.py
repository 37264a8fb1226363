"""Tests of the t-interval (emrakul.lab.stats) and of the rliable aggregates (emrakul.lab.report):
interquartile mean, stratified bootstrap, performance profiles."""

import numpy as np
import pytest

from emrakul.lab import report, stats


def _iqm_reference(x):
    x = sorted(float(v) for v in np.ravel(x))
    cut = len(x) // 4  # floor(0.25 n) from each end, as scipy.stats.trim_mean(x, 0.25)
    kept = x[cut : len(x) - cut]
    return sum(kept) / len(kept)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 13, 40])
def test_iqm_matches_a_reference_on_random_inputs(n):
    rng = np.random.default_rng(n)
    x = rng.standard_cauchy(size=n)
    assert report.iqm(x) == pytest.approx(_iqm_reference(x), rel=1e-12)


def test_iqm_ignores_outliers_and_rejects_bad_input():
    assert report.iqm([1, 2, 3, 4, 1e9, -1e9, 2.5, 3.5]) == pytest.approx(np.mean([2, 2.5, 3, 3.5]))
    with pytest.raises(ValueError, match="at least one"):
        report.iqm([])
    with pytest.raises(ValueError, match="non-finite"):
        report.iqm([1.0, np.nan])


def test_stratified_bootstrap_resamples_within_tasks():
    # Task 0 always scores 0, task 1 always 10: any within-task resample keeps the mean at 5,
    # while resampling across tasks would not.
    x = np.stack([np.zeros(6), np.full(6, 10.0)], axis=1)
    point, low, high = report.stratified_bootstrap_ci(x, lambda r: float(r.mean()), reps=200)
    assert point == low == high == 5.0


def test_stratified_bootstrap_interval_covers_and_shrinks_with_runs():
    rng = np.random.default_rng(0)
    small = rng.normal(1.0, 1.0, size=(5, 3))
    large = rng.normal(1.0, 1.0, size=(80, 3))
    p1, l1, h1 = report.stratified_bootstrap_ci(small, reps=500)
    p2, l2, h2 = report.stratified_bootstrap_ci(large, reps=500)
    assert l1 <= p1 <= h1 and l2 <= p2 <= h2
    assert (h2 - l2) < (h1 - l1)
    assert l2 < 1.0 < h2  # the true IQM of N(1, 1) is 1
    # deterministic for a seed
    assert report.stratified_bootstrap_ci(
        small, reps=100, seed=3
    ) == report.stratified_bootstrap_ci(small, reps=100, seed=3)


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
        report.stratified_bootstrap_ci(scores, **kw)


def test_mean_ci_against_hand_computation():
    m, h = stats.mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(4.303 * 1.0 / np.sqrt(3))


def _bootstrap_reference(x, statistic, reps, seed, confidence=0.95):
    """A hand-written stratified bootstrap: runs resampled with replacement within each task."""
    rng = np.random.default_rng(seed)
    runs, tasks = x.shape
    values = []
    for _ in range(reps):
        idx = rng.integers(0, runs, size=(runs, tasks))
        values.append(statistic(np.take_along_axis(x, idx, axis=0)))
    alpha = (1.0 - confidence) / 2
    return np.quantile(values, [alpha, 1 - alpha])


def test_stratified_bootstrap_matches_a_hand_written_reference():
    x = np.random.default_rng(7).normal(2.0, 1.0, size=(10, 3))
    point, low, high = report.stratified_bootstrap_ci(x, reps=3000, seed=1)
    ref_low, ref_high = _bootstrap_reference(x, report.iqm, reps=3000, seed=1)
    assert point == pytest.approx(_iqm_reference(x), rel=1e-12)
    half = ref_high - ref_low
    assert low == pytest.approx(ref_low, abs=0.1 * half)  # two Monte Carlo estimates
    assert high == pytest.approx(ref_high, abs=0.1 * half)


def test_stratified_bootstrap_leaves_the_global_numpy_generator_alone():
    np.random.seed(5)
    want = np.random.rand()
    np.random.seed(5)
    report.stratified_bootstrap_ci(np.ones((3, 2)), reps=10, seed=0)
    assert np.random.rand() == want


def test_performance_profile_counts_runs_above_each_threshold():
    scores = {"a": np.array([[0.5, 1.5], [1.0, 2.0]]), "b": np.full((2, 2), 3.0)}
    taus = [0.0, 0.75, 1.25, 2.5]
    profiles, bands = report.performance_profile(scores, taus, reps=50)
    np.testing.assert_allclose(profiles["a"], [1.0, 0.75, 0.5, 0.0])
    np.testing.assert_allclose(profiles["b"], [1.0, 1.0, 1.0, 1.0])
    assert bands["a"].shape == (2, 4)
    assert np.all(bands["a"][0] <= profiles["a"] + 1e-12)
    assert np.all(profiles["a"] <= bands["a"][1] + 1e-12)


@pytest.mark.parametrize(
    "scores, taus, kw, match",
    [
        ({}, [1.0], {}, "at least one group"),
        ({"a": np.zeros(3)}, [1.0], {}, "runs, tasks"),
        ({"a": np.zeros((2, 2))}, [], {}, "taus"),
        ({"a": np.zeros((2, 2))}, [1.0], {"reps": 0}, "reps"),
    ],
)
def test_performance_profile_bad_inputs(scores, taus, kw, match):
    with pytest.raises(ValueError, match=match):
        report.performance_profile(scores, taus, **kw)


def test_plot_performance_profile_writes_a_png(tmp_path):
    scores = {"a": np.array([[0.5, 1.5], [1.0, 2.0]])}
    taus = np.linspace(0.0, 2.5, 6)
    profiles, bands = report.performance_profile(scores, taus, reps=20)
    path = str(tmp_path / "profile.png")
    report.plot_performance_profile(profiles, bands, taus, path, title="t")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_table_and_interval_formatting():
    assert report.fmt_ci(1.23456, 0.5) == "1.23 ± 0.50"
    assert report.fmt_ci(1.0, float("nan"), 3) == "1.000"
    assert report.fmt_ci(float("nan"), 1.0) == "n/a"
    assert report.markdown_table(["a", "b"], [[1, "x"]]) == ["| a | b |", "|---|---|", "| 1 | x |"]


def test_performance_profile_equals_rliables_own_score_distribution():
    from rliable import library

    scores = {"a": np.random.default_rng(0).normal(1.0, 0.3, size=(5, 3))}
    taus = np.linspace(0.0, 2.0, 11)
    profiles, bands = report.performance_profile(scores, taus, reps=100, seed=4)
    np.random.seed(4)
    want_profiles, want_bands = library.create_performance_profile(scores, taus, reps=100)
    np.testing.assert_array_equal(profiles["a"], want_profiles["a"])
    np.testing.assert_array_equal(bands["a"], want_bands["a"])
